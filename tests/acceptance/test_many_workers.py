"""Many workers, no coordinator: twelve worker processes share one PostgreSQL queue.

Nothing hands out work but the claim statement (``FOR UPDATE SKIP LOCKED``); this
proves it holds at scale: every one of 20,000 tasks runs exactly once (each run is a
line in a file, counted per key), and no worker logs a deadlock or a traceback.

The tasks write to a file, not the database: a thread that touches the database holds
a connection of its own, and twelve workers of four threads each must fit PostgreSQL's
default ``max_connections`` (100) beside the tests that run in parallel. Warnings and
errors only in the logs (``-v 0``): that is where a deadlock or a traceback would
show, and 20,000 lines of INFO would only cost CPU.
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from django_qtasks import app
from django_qtasks.models import TaskRecord
from tests.acceptance.test_workers import exit_code, log_text, statuses, wait_registered
from tests.conftest import WorkerProcesses
from tests.helpers import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WORKERS, THREADS, TASKS = 12, 4, 20_000
TROUBLE = re.compile(r"deadlock|Traceback", re.IGNORECASE)


def test_twelve_workers_run_20000_tasks_exactly_once_without_deadlocks(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    logs = [tmp_path / f"worker-{n}.log" for n in range(WORKERS)]
    procs = [
        worker_processes.start(
            "--concurrency", str(THREADS), "--poll-interval", "0.1", "-v", "0", log=log
        )
        for log in logs
    ]
    wait_registered(procs, logs)

    keys = [f"k{n}" for n in range(TASKS)]
    runs = tmp_path / "runs.txt"
    app.add_tasks([("tests.note", (str(runs), key), {}) for key in keys])
    wait_until(
        lambda: statuses() == {"success": TASKS},
        timeout=120,
        interval=0.5,
        message=f"{TASKS} tasks to succeed",
    )

    ran = Counter(runs.read_text().split())
    assert [key for key, n in ran.items() if n > 1][:10] == [], "a task ran more than once"
    assert sorted(ran) == sorted(keys)
    assert set(TaskRecord.objects.values_list("attempt", flat=True)) == {1}
    workers = set(TaskRecord.objects.values_list("worker_id", flat=True))
    assert len(workers) == WORKERS, f"every worker should have taken tasks: {sorted(workers)}"

    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    codes = [exit_code(proc, log, timeout=60) for proc, log in zip(procs, logs, strict=True)]
    assert codes == [0] * WORKERS
    for log in logs:
        found = TROUBLE.search(log_text(log))
        assert found is None, f"{found.group(0)!r} in {log.name}:\n{log_text(log)[-3000:]}"
