"""The benchmark driver for Celery with Redis (runs in .bench/venv-celery).

Single enqueue: ``task.delay()``. Bulk: Celery has no bulk insert; ``group(...)
.apply_async()`` is its way to send many at once, so the bulk column uses it. Workers:
the prefork pool (Celery's default and recommendation) with ``-c`` = number of CPUs, and
``--without-gossip --without-mingle --without-heartbeat`` (no cluster chatter at start).
The no-op task ignores its result (Celery's advice for throughput) and counts itself
done with one Redis INCR; the latency task keeps its result (its start time).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from celery import group

from bench.measure import ROOT, Driver, main
from bench.peers.celery_app import DONE_KEY, app, noop, stamp

POOL = os.environ.get("BENCH_CELERY_POOL", "prefork")
CONCURRENCY = os.environ.get("BENCH_CELERY_CONCURRENCY", str(os.cpu_count() or 1))


class CeleryDriver(Driver):
    bulk_api = "group(...).apply_async()"
    uses_database = False  # Redis holds its queue
    settings = (
        f"celery worker --pool {POOL} -c {CONCURRENCY} --without-gossip --without-mingle "
        "--without-heartbeat, Redis broker, prefetch default"
    )

    def prepare(self) -> None:
        self.redis = app.backend.client
        self.redis.flushdb()  # this Redis database only (DB 15 by default)

    def enqueue_one(self) -> None:
        noop.delay()

    def enqueue_bulk(self, n: int) -> None:
        group(noop.s() for _ in range(n)).apply_async()

    def worker_command(self) -> tuple[list[str], dict[str, str]]:
        cli = str(Path(sys.executable).with_name("celery"))
        argv = [cli, "-A", "bench.peers.celery_app", "worker", "--pool", POOL, "-c", CONCURRENCY]
        flags = ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
        return [*argv, *flags], {"PYTHONPATH": str(ROOT)}

    def done_count(self) -> int:
        return int(self.redis.get(DONE_KEY) or 0)

    def enqueue_stamped(self) -> Any:
        return stamp.delay()

    def started_at(self, handle: Any) -> float | None:
        return handle.result if handle.ready() else None

    def close(self) -> None:
        self.redis.flushdb()


if __name__ == "__main__":
    main(CeleryDriver)
