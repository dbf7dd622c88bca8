"""qtasks_status and django_qtasks.status: what they read, --check's verdicts, the JSON
schema, and that every statement goes through an index on a big table."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from django_qtasks import app
from django_qtasks.contrib.status import read_status, recent_outcomes
from django_qtasks.models import TaskRecord
from tests.helpers import analyze
from tests.integration.test_claim import explain

pytestmark = pytest.mark.django_db

NOW = timezone.now()
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture(autouse=True)
def _now() -> None:
    """Ages count from each test's own start: a test may run long after the module was
    imported (under pytest-xdist), and the command it runs reads the real clock."""
    global NOW
    NOW = timezone.now()


def rows(count: int, *, status: str, queue: str = "default", age: dt.timedelta = MINUTE,
         finished: dt.timedelta | None = None) -> None:
    """``count`` task rows; waiting ones became due ``age`` ago (negative: not yet)."""
    run_after = NOW - age
    done = None if finished is None else NOW - finished
    TaskRecord.objects.bulk_create(
        [
            TaskRecord(task_name="tests.record", queue=queue, status=status, args=[str(n)],
                       run_after=run_after, created_at=min(run_after, NOW), updated_at=NOW,
                       finished_at=done)
            for n in range(count)
        ],
        batch_size=5000,
    )  # fmt: skip


def beat(worker_id: str, *, queues: list[str] | None = None, ttl: float = 30) -> None:
    info = {"host": "h1", "pid": 42, "queues": queues, "concurrency": 4, "running": 0,
            "last_beat": NOW.isoformat()}  # fmt: skip
    app.broker.heartbeat(worker_id, info, ttl=ttl)


def run(*args: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command("qtasks_status", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_status_reads_queues_workers_and_recent_outcomes():
    rows(2, status="new", age=10 * MINUTE)
    rows(1, status="retry", age=-MINUTE)  # due in a minute: waiting, not ready
    rows(1, status="process", queue="mail")
    rows(3, status="success", finished=MINUTE)
    rows(1, status="error", finished=2 * MINUTE)
    rows(1, status="cancel", finished=3 * MINUTE)
    rows(5, status="error", finished=dt.timedelta(hours=1))  # outside the window
    app.broker.set_queue_paused("idle", True)
    beat("w-live", queues=["mail"])
    beat("w-dead", ttl=-3600)

    status = read_status(now=NOW)

    queues = {q.name: q for q in status.queues}
    assert set(queues) == {"default", "idle", "mail"}
    default = queues["default"]
    assert (default.waiting, default.ready, default.running) == (3, 2, 0)
    assert default.oldest_ready_age == pytest.approx(600, abs=1)
    assert queues["mail"].running == 1
    assert queues["mail"].oldest_ready_age is None
    assert queues["idle"].paused
    assert not default.paused
    workers = {w.id: w for w in status.workers}
    assert workers["w-live"].alive
    assert not workers["w-dead"].alive
    assert (workers["w-live"].host, workers["w-live"].pid) == ("h1", 42)
    assert workers["w-live"].queues == ["mail"]
    assert workers["w-dead"].queues is None
    assert workers["w-live"].threads == 4
    assert [w.id for w in status.live_workers] == ["w-live"]
    recent = status.recent
    assert (recent.finished, recent.failed, recent.cancelled) == (5, 1, 1)
    assert recent.failure_rate == pytest.approx(0.2)
    assert recent_outcomes(window=3 * 3600, now=NOW).failed == 6


def test_check_passes_when_every_ready_queue_has_a_live_worker():
    rows(1, status="new", queue="mail")
    beat("w1", queues=["mail"])
    code, out, err = run("--check")
    assert (code, err) == (0, "")
    assert "mail" in out


def test_check_fails_for_a_ready_queue_without_a_live_worker():
    rows(2, status="new", queue="mail")
    rows(1, status="new", age=-MINUTE, queue="later")  # not due: nobody is late yet
    beat("w1", queues=["other"])
    beat("w2", ttl=-3600)  # expired: serves nothing
    code, _, err = run("--check")
    assert code == 1
    assert "queue 'mail': no live worker serves it (2 ready)" in err
    assert "later" not in err


def test_check_a_named_queue_even_when_it_is_empty():
    beat("w1", queues=["mail"])
    assert run("--check", "--queue", "mail")[0] == 0
    code, _, err = run("--check", "--queue", "mail,reports")
    assert code == 1
    assert "'reports'" in err
    assert "'mail'" not in err


def test_check_fails_when_the_oldest_ready_task_is_too_old():
    rows(1, status="new", age=10 * MINUTE)
    beat("w1")
    assert run("--check", "--max-age", "900")[0] == 0
    code, _, err = run("--check", "--max-age", "60")
    assert code == 1
    assert "the oldest ready task has waited" in err
    app.broker.set_queue_paused("default", True)  # waiting on purpose
    assert run("--check", "--max-age", "60")[0] == 0


def test_without_check_problems_are_shown_but_the_exit_code_is_zero():
    rows(1, status="new")
    code, out, err = run()
    assert (code, err) == (0, "")
    assert "Problems" in out
    assert "no live worker" in out


def test_table_output():
    rows(2, status="new", age=3 * MINUTE)
    rows(1, status="error", finished=MINUTE)
    rows(1, status="success", finished=MINUTE)
    beat("host-a:1:abc", queues=["default", "mail"])
    out = run()[1]
    lines = out.splitlines()
    assert lines[0] == "Queues"
    assert lines[1].split() == ["queue", "waiting", "ready", "running", "oldest", "ready", "paused"]
    assert lines[2].split()[:4] == ["default", "2", "2", "0"]
    assert "host-a:1:abc" in out
    assert "default,mail" in out
    assert "alive" in out
    assert "2 finished, 1 failed (50.0%), 0 cancelled" in out


def test_json_output_has_the_documented_schema():
    rows(1, status="new")
    rows(1, status="success", finished=MINUTE)
    beat("w1")
    code, out, _ = run("--json", "--window", "600")
    data = json.loads(out)
    assert code == 0
    assert set(data) == {"version", "time", "queues", "queues_capped", "workers", "recent",
                         "unknown_statuses", "problems"}  # fmt: skip
    assert data["version"] == 1
    assert data["queues"] == [
        {"name": "default", "waiting": 1, "ready": 1, "running": 0,
         "oldest_ready_age": pytest.approx(60, abs=5), "paused": False}
    ]  # fmt: skip
    (worker,) = data["workers"]
    assert set(worker) == {"id", "host", "pid", "queues", "threads", "running",
                           "heartbeat_age", "alive"}  # fmt: skip
    assert data["recent"] == {"window": 600.0, "finished": 1, "failed": 0, "cancelled": 0,
                              "failure_rate": 0.0}  # fmt: skip
    assert data["unknown_statuses"] == {}
    assert data["problems"] == []


def test_rows_in_an_unknown_status_are_a_problem_named_in_every_form():
    """A status no worker knows strands its rows for good: --check fails on it and every
    output names the status and its rows, whatever else the queue holds."""
    rows(3, status="paused")
    rows(1, status="Success")
    rows(2, status="success", finished=MINUTE)
    rows(1, status="blocked")
    beat("w1")
    # MariaDB's collation ignores case: every statement there takes 'Success' for a
    # success (claims and pruning too), so only 'paused' is unknown.
    unknown = {"paused": 3} if connection.vendor == "mysql" else {"Success": 1, "paused": 3}
    assert read_status(now=NOW).unknown_statuses == unknown
    code, out, err = run("--check")
    assert code == 1
    assert "status 'paused': 3 task row(s) in a status no worker runs or prunes" in err
    assert ("status 'Success': 1 task row(s)" in err) == ("Success" in unknown)
    assert "status 'paused': 3" in out
    code, out, _ = run("--json")
    assert json.loads(out)["unknown_statuses"] == unknown
    TaskRecord.objects.filter(status__in=["paused", "Success"]).delete()
    assert run("--check")[0] == 0


def test_bad_options_are_refused():
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="--window"):
        call_command("qtasks_status", "--window", "0")
    with pytest.raises(CommandError, match="--max-age"):
        call_command("qtasks_status", "--max-age", "-1")


def _task_statements(action: Callable[[], Any]) -> list[tuple[str, list[Any]]]:
    table = TaskRecord._meta.db_table
    seen: list[tuple[str, list[Any]]] = []

    def spy(execute: Callable[..., Any], sql: str, params: Any, *rest: Any) -> Any:
        if table in sql:
            seen.append((sql, list(params or ())))
        return execute(sql, params, *rest)

    with connection.execute_wrapper(spy):
        action()
    return seen


def test_every_statement_reads_an_index_on_a_big_table():
    rows(20_000, status="success", finished=dt.timedelta(days=2))
    rows(300, status="error", finished=MINUTE)
    rows(5, status="new")
    rows(2, status="process")
    table = TaskRecord._meta.db_table
    if connection.vendor == "postgresql":  # what autovacuum does; nothing does on SQLite
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {table}")
    try:
        statements = _task_statements(lambda: read_status(now=NOW))
        plans = [explain(sql, params) for sql, params in statements]
    finally:
        # ANALYZE's statistics outlive the test's rollback on PostgreSQL: leave them as
        # they were, an empty table.
        TaskRecord.objects.all().delete()
        analyze(table)
    # the queues, the recent outcomes, the statuses present
    assert len(plans) == 3, statements
    assert "qtasks_finished_idx" in plans[1], plans[1]
    for plan in plans:
        if connection.vendor == "postgresql":
            assert "Seq Scan" not in plan, plan
        else:
            # "SCAN t" alone reads the table; "SCAN t USING ... INDEX" walks an index
            # (the loose scan's first step reads one entry of it, LIMIT 1).
            assert not any(line.endswith(f"SCAN {table}") for line in plan.splitlines()), plan
