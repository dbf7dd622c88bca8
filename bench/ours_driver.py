"""The benchmark driver for django-qtasks (see bench/measure.py for the protocol).

    python bench/ours_driver.py {enqueue,bulk,drain,latency} N [--workers W]

Settings: bench/settings.py (PostgreSQL from BENCH_DATABASE_URL, persistent connections,
LISTEN/NOTIFY on); workers are ``qtasks_worker --concurrency C`` processes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_URL, setup_django, worker_argv, worker_env
from bench.measure import Driver, main

CONCURRENCY = int(os.environ.get("BENCH_OURS_CONCURRENCY", "64"))


class OursDriver(Driver):
    bulk_api = "app.add_tasks()"

    def __init__(self, concurrency: int = CONCURRENCY) -> None:
        self.url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
        self.concurrency = concurrency
        self.settings = f"qtasks_worker --concurrency {concurrency} (threads), LISTEN/NOTIFY"

    def prepare(self) -> None:
        setup_django(self.url)  # migrates the fresh database
        from django_qtasks import app
        from django_qtasks.models import TaskRecord

        self.app, self.records = app, TaskRecord.objects

    def enqueue_one(self) -> None:
        self.app.add_task("bench.noop")

    def enqueue_bulk(self, n: int) -> None:
        self.app.add_tasks([("bench.noop", (), {})] * n)

    def worker_command(self) -> tuple[list[str], dict[str, str]]:
        return worker_argv("--concurrency", str(self.concurrency), "-v", "0"), worker_env(self.url)

    def done_count(self) -> int:
        return self.records.filter(status="success").count()

    def enqueue_stamped(self) -> Any:
        return self.app.add_task("bench.stamp").uuid

    def started_at(self, handle: Any) -> float | None:
        rows = self.records.filter(uuid=handle, status="success").values_list("returning")
        return rows[0][0] if rows else None

    def release(self) -> None:
        if hasattr(self, "records"):  # Django is set up
            from django.db import connection

            connection.close()


if __name__ == "__main__":
    main(OursDriver)
