"""Database faults under a real worker process: connections killed mid-run."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connection
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
