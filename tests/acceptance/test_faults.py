"""Database faults under a real worker process: connections killed mid-run."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connection, transaction
from django.db.models import Count

from django_qtasks import app
from django_qtasks.models import TaskRecord
from tests.helpers import wait_until
from tests.testapp.models import Execution

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def kill_other_backends(dsn_params: dict) -> int:
    """Terminate every other session on the test database, as a failover would."""
    with psycopg.connect(**dsn_params, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_terminated_connections_lose_no_task(worker_processes, tmp_path):
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    total = 400
    for i in range(total):
        app.add_task("tests.record_sturdy", f"k{i}")
    connection.close()  # ours would be killed too
    log = tmp_path / "worker.log"
    proc = worker_processes.start("--concurrency", "4", "--poll-interval", "0.05", log=log)

    # Five rounds of "failover" while the worker is busy: every session is cut.
    killed = 0
    for _ in range(5):
        wait_until(lambda: TaskRecord.objects.filter(status="success").exists(), timeout=60)
        connection.close()
        killed += kill_other_backends(params)
        time.sleep(0.3)  # the pace of the faults, not synchronisation
    wait_until(
        lambda: not TaskRecord.objects.exclude(status__in=["success", "error"]).exists(),
        timeout=90,
        message="every task to finish",
    )
    connection.close()
    assert proc.poll() is None, log.read_text()[-3000:]
    statuses = dict(TaskRecord.objects.values_list("status").annotate(n=Count("uuid")))
    failed = list(TaskRecord.objects.exclude(status="success").values_list("errors", flat=True)[:3])
    assert statuses == {"success": total}, failed
    assert killed > 0
    keys = set(Execution.objects.values_list("key", flat=True))
    assert keys == {f"k{i}" for i in range(total)}
    assert "failed" in log.read_text()  # the worker said what happened


@pytest.mark.faults
def test_terminating_every_connection_repeatedly_loses_no_plain_task(worker_processes, tmp_path):
    """Plain tasks (no ``retry=``), three workers: a query that meets a terminated
    session is the environment's fault, not the task's, and must not cost its attempt."""
    from tests.faultkit import report, tally

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    keys = [f"t{i}" for i in range(1500)]
    with transaction.atomic():
        for key in keys:
            app.add_task("tests.work", key, 0.02)
    connection.close()
    log = tmp_path / "workers.log"
    procs = [worker_processes.start("--concurrency", "4", log=log) for _ in range(3)]

    def successes() -> int:
        count = TaskRecord.objects.filter(status="success").count()
        connection.close()  # ours would be killed too
        return count

    rounds = killed = 0
    while successes() < len(keys) and rounds < 8:
        goal = min(successes() + 100, len(keys))
        wait_until(lambda goal=goal: successes() >= goal, timeout=60, message="progress")
        killed += kill_other_backends(params)
        rounds += 1
    wait_until(
        lambda: not TaskRecord.objects.exclude(status__in=["success", "error"]).exists(),
        timeout=120,
        message="every task to finish",
    )
    statuses = dict(TaskRecord.objects.values_list("args__0", "status"))
    runs = dict(Execution.objects.values_list("key").annotate(n=Count("id")))
    result = tally(statuses, runs, keys)
    rescued = sum(TaskRecord.objects.values_list("rescues", flat=True))
    report("terminate", {**result, "rounds": rounds, "sessions_killed": killed, "rescued": rescued})
    assert all(proc.poll() is None for proc in procs), log.read_text()[-3000:]
    assert killed > 0
    assert (result["success"], result["other"], result["unproven"]) == (len(keys), 0, 0), result
