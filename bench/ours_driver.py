"""The benchmark driver for django-qtasks (see bench/measure.py for the protocol).

    python bench/ours_driver.py {enqueue,bulk,drain,latency} N [--workers W]

Which of our rows it measures comes from the environment: ``BENCH_OURS_SETTINGS``, the
settings module (``bench.settings``, tuned: persistent connections, short poll; or
``bench.settings_defaults``: no QTASKS key, Django's CONN_MAX_AGE), and
``BENCH_OURS_ARGS``, the ``qtasks_worker`` flags (none: the defaults row); and
``BENCH_OURS_TASK``, the task the drain preloads (``bench.noop``, or the CPU-bound
``bench.spin``).

Its enqueue measurement times three ways of writing one no-op task, taking turns in
this one process: the database alone (bench/pg_driver.py's prepared INSERT of the same
row, on a psycopg connection of its own), ``add_task()``, and ``django.tasks``
``enqueue()`` on our backend (where Django has the Tasks framework).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_URL, setup_django, worker_argv, worker_env
from bench.measure import Driver, main
from bench.pg_driver import PostgresDriver

SETTINGS = os.environ.get("BENCH_OURS_SETTINGS", "bench.settings")
ARGS = shlex.split(os.environ.get("BENCH_OURS_ARGS", "--concurrency 64"))
#: the task a drain preloads: ``bench.noop``, or ``bench.spin`` (about 1 ms of CPU each)
TASK = os.environ.get("BENCH_OURS_TASK", "bench.noop")


class OursDriver(Driver):
    bulk_api = "app.add_tasks()"

    def __init__(self, args: list[str] | None = None, settings: str = SETTINGS) -> None:
        self.url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
        self.args = ARGS if args is None else args
        self.settings_module = settings
        flags = shlex.join(self.args) or "no flags"
        wake = "polling" if self.url.startswith("mysql") else "LISTEN/NOTIFY"
        self.settings = f"qtasks_worker {flags} ({settings}), {wake}"
        if TASK != "bench.noop":
            self.settings += f", tasks: {TASK}"

    def prepare(self) -> None:
        setup_django(self.url, self.settings_module)  # migrates the fresh database
        from django_qtasks import app
        from django_qtasks.models import TaskRecord

        self.app, self.records = app, TaskRecord.objects

    def enqueue_one(self) -> None:
        self.app.add_task("bench.noop")

    def enqueue_ways(self) -> dict[str, Callable[[], None]]:
        ways = {"rate": self.enqueue_one}
        if not self.url.startswith("mysql"):  # the PostgreSQL-alone row's single enqueue
            alone = PostgresDriver()
            alone.connect()
            self.alone = alone
            ways["pg_rate"] = alone.enqueue_one
        try:
            from bench.benchapp.tasks import django_noop
        except ImportError:
            return ways
        ways["django_tasks_rate"] = django_noop.enqueue
        return ways

    def enqueue_bulk(self, n: int) -> None:
        self.app.add_tasks([(TASK, (), {})] * n)

    def worker_command(self) -> tuple[list[str], dict[str, str]]:
        argv = worker_argv(*self.args, "-v", "0")
        return argv, worker_env(self.url, self.settings_module)

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

    def close(self) -> None:
        if hasattr(self, "alone"):
            self.alone.close()


if __name__ == "__main__":
    main(OursDriver)
