"""Settings for the tuned rows of the benchmarks and for the other bench scripts:
the defaults (``bench/settings_defaults.py``) with persistent connections, a short
poll interval and quick heartbeats (bench/chaos.py kills workers and wants them
rescued within seconds)."""

from __future__ import annotations

from bench.settings_defaults import *  # noqa: F403
from bench.settings_defaults import DATABASES, env

DATABASES = {"default": {**DATABASES["default"], "CONN_MAX_AGE": None}}
QTASKS = {
    "POLL_INTERVAL": 0.05,
    "HEARTBEAT_INTERVAL": env.float("BENCH_HEARTBEAT_INTERVAL", default=0.5),
    "HEARTBEAT_TIMEOUT": env.float("BENCH_HEARTBEAT_TIMEOUT", default=2.0),
    "RESCUE_INTERVAL": env.float("BENCH_RESCUE_INTERVAL", default=1.0),
}
