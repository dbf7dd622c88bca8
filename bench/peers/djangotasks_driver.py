"""The benchmark driver for django-tasks-db (runs in .bench/venv-djangotasks).

Its worker, ``db_worker``, runs one task at a time per process, so W workers are W
processes; it polls every ``--interval`` seconds when idle (default 1 s, here 0.05 s, the
poll interval of our own side) and has no bulk enqueue API.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.measure import ROOT, Driver, main

INTERVAL = os.environ.get("BENCH_DJANGOTASKS_INTERVAL", "0.05")
ENV = {"DJANGO_SETTINGS_MODULE": "bench.peers.djangotasks_settings", "PYTHONPATH": str(ROOT)}


class DjangoTasksDriver(Driver):
    settings = f"db_worker --interval {INTERVAL} --no-startup-delay (one task at a time)"

    def __init__(self) -> None:
        os.environ.update(ENV)
        import django

        django.setup()

    def prepare(self) -> None:
        from django.core.management import call_command
        from django.tasks import TaskResultStatus
        from django_tasks_db.models import DBTaskResult

        from bench.peers import djangotasks_tasks

        call_command("migrate", verbosity=0)
        self.tasks, self.results = djangotasks_tasks, DBTaskResult.objects
        self.successful = TaskResultStatus.SUCCESSFUL

    def enqueue_one(self) -> None:
        self.tasks.noop.enqueue()

    def worker_command(self) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "django", "db_worker", "--interval", INTERVAL]
        return [*argv, "--no-startup-delay", "--verbosity", "0"], ENV

    def done_count(self) -> int:
        return self.results.filter(status=self.successful).count()

    def enqueue_stamped(self) -> Any:
        return self.tasks.stamp.enqueue().id

    def started_at(self, handle: Any) -> float | None:
        rows = self.results.filter(id=handle, status=self.successful).values_list("return_value")
        return rows[0][0] if rows else None

    def release(self) -> None:
        from django.db import connection

        connection.close()


if __name__ == "__main__":
    main(DjangoTasksDriver)
