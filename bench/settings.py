"""Settings for the benchmarks: PostgreSQL from BENCH_DATABASE_URL (a scratch database)."""

from __future__ import annotations

import environ

env = environ.Env()
DATABASE_URL = env.str(
    "BENCH_DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/qtasks_bench"
)
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
DATABASES["default"]["CONN_MAX_AGE"] = None
SECRET_KEY = "bench-only"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django_qtasks", "bench.benchapp"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
QTASKS = {
    "POLL_INTERVAL": 0.05,
    "HEARTBEAT_INTERVAL": env.float("BENCH_HEARTBEAT_INTERVAL", default=0.5),
    "HEARTBEAT_TIMEOUT": env.float("BENCH_HEARTBEAT_TIMEOUT", default=2.0),
    "RESCUE_INTERVAL": env.float("BENCH_RESCUE_INTERVAL", default=1.0),
}
