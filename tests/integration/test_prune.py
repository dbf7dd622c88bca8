"""Retention: qtasks_prune and PRUNE_AFTER delete old finished tasks in short batches."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from django_qtasks import app
from django_qtasks.models import ScheduleRun, TaskRecord, TaskStatus
from django_qtasks.settings import build_settings
from django_qtasks.storage.retention import parse_age, prune
from django_qtasks.worker.heartbeat import Heartbeat
from tests.helpers import analyze
from tests.integration.test_claim import explain

pytestmark = pytest.mark.django_db

NOW = timezone.now()


def rows(status: str, count: int, *, age: dt.timedelta | None, prefix: str = "") -> None:
    """``count`` rows of ``status`` that finished ``age`` ago (``None``: not finished)."""
    finished = None if age is None else NOW - age
    created = (finished or NOW) - dt.timedelta(seconds=1)
    TaskRecord.objects.bulk_create(
        [
            TaskRecord(task_name="tests.record", args=[f"{prefix}{status}{n}"], status=status,
                       run_after=created, created_at=created, updated_at=created,
                       finished_at=finished)
            for n in range(count)
        ],
        batch_size=2000,
    )  # fmt: skip


def counts() -> dict[str, int]:
    return {
        status: TaskRecord.objects.filter(status=status).count() for status in TaskStatus.values
    }


class DeleteSpy:
    """The DELETE statements run while active (to count batches)."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, list[Any]]] = []
        self.picks: list[tuple[str, list[Any]]] = []  # MariaDB's SELECT ... SKIP LOCKED

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, *rest: Any) -> Any:
        if "DELETE" in sql.upper():
            self.statements.append((sql, list(params)))
        elif "SKIP LOCKED" in sql.upper():
            self.picks.append((sql, list(params)))
        return execute(sql, params, *rest)


DAYS = dt.timedelta(days=1)


def test_only_old_finished_rows_of_the_chosen_statuses_go_in_batches():
    for status in ("success", "error", "cancel"):
        rows(status, 25, age=10 * DAYS)  # old
        rows(status, 3, age=1 * DAYS, prefix="new")  # recent
    for status in ("new", "retry", "process"):
        rows(status, 5, age=None)  # waiting and running: never touched, however old
    TaskRecord.objects.filter(status__in=["new", "retry", "process"]).update(
        created_at=NOW - 30 * DAYS
    )

    spy = DeleteSpy()
    with connection.execute_wrapper(spy):
        result = prune(
            app.broker.storage, 7 * DAYS, statuses=["success", "error"], batch_size=10, now=NOW
        )

    assert result.tasks == 50
    task_deletes = [s for s in spy.statements if TaskRecord._meta.db_table in s[0]]
    # 50 rows, 10 a statement: 5 full batches and the one that finds nothing left
    # (which on MariaDB, where a batch is locked first, deletes nothing).
    assert len(task_deletes) == (5 if connection.vendor == "mysql" else 6)
    assert result.batches == 5
    assert counts() == {
        "success": 3, "error": 3, "cancel": 28, "new": 5, "retry": 5, "process": 5, "blocked": 0,
    }  # fmt: skip


def test_the_prune_statement_reads_the_finished_rows_index():
    rows("success", 20_000, age=dt.timedelta(hours=1))  # recent: kept
    rows("success", 300, age=10 * DAYS, prefix="old")
    rows("new", 5, age=None)
    analyze(TaskRecord._meta.db_table)
    spy = DeleteSpy()
    with connection.execute_wrapper(spy):
        app.broker.storage.prune(NOW - 7 * DAYS, limit=100)
    sql, params = spy.statements[0]
    if connection.vendor == "mysql":  # the batch is picked (and locked) before its DELETE
        sql, params = spy.picks[0]
    plan = explain(sql, params)
    # ANALYZE's statistics outlive the test's rollback on PostgreSQL (the admin list's
    # estimated counts read them): leave them as they were, an empty table.
    TaskRecord.objects.all().delete()
    analyze(TaskRecord._meta.db_table)
    assert "qtasks_finished_idx" in plan, plan
    if connection.vendor == "postgresql":
        assert "Seq Scan" not in plan, plan
    elif connection.vendor == "mysql":
        assert "filesort" not in plan, plan  # no sort: the index gives the order
    else:
        assert "TEMP B-TREE" not in plan, plan  # no sort: the index gives the order


def test_schedule_runs_are_pruned_but_each_schedule_keeps_its_newest():
    def run(schedule: str, age: dt.timedelta) -> ScheduleRun:
        return ScheduleRun(schedule=schedule, tick=NOW - age, task_name="t", enqueued_at=NOW)

    ScheduleRun.objects.bulk_create(
        [run("a", n * DAYS) for n in range(8, 12)] + [run("b", 9 * DAYS), run("b", 1 * DAYS)]
    )
    result = prune(app.broker.storage, 7 * DAYS, batch_size=2, now=NOW)
    assert result.schedule_runs == 4
    left = sorted(ScheduleRun.objects.values_list("schedule", "tick"))
    assert left == [("a", NOW - 8 * DAYS), ("b", NOW - 1 * DAYS)]


def test_prune_refuses_statuses_that_are_not_finished():
    rows("new", 1, age=None)
    with pytest.raises(ValueError, match="finished tasks only"):
        app.broker.storage.prune(NOW, statuses=["new"])


# -- the command ---------------------------------------------------------------------------
def test_the_command_deletes_and_reports():
    rows("success", 12, age=10 * DAYS)
    rows("error", 2, age=10 * DAYS)
    out = StringIO()
    call_command(
        "qtasks_prune", "--older-than", "7d", "--status", "success", "--batch-size", "5",
        stdout=out,
    )  # fmt: skip
    assert "Deleted 12 success tasks finished before" in out.getvalue()
    assert "in 3 batch(es)" in out.getvalue()
    assert counts()["success"] == 0
    assert counts()["error"] == 2


def test_the_command_dry_run_deletes_nothing():
    rows("cancel", 4, age=2 * DAYS)
    out = StringIO()
    call_command("qtasks_prune", "--older-than", "36h", "--dry-run", stdout=out)
    assert "Would delete 4 success/error/cancel tasks" in out.getvalue()
    assert counts()["cancel"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "7 days"], "--older-than"),
        (["--older-than", "0"], "--older-than"),
        (["--older-than", "7d", "--status", "new"], "--status"),
        (["--older-than", "7d", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_the_command_rejects_bad_options(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("qtasks_prune", *args)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 604800), ("12h", 43200), ("30m", 1800), ("45s", 45), ("3600", 3600), ("2w", 1209600),
     ("1.5h", 5400)],
)  # fmt: skip
def test_ages(text, seconds):
    assert parse_age(text) == dt.timedelta(seconds=seconds)


# -- PRUNE_AFTER: one batch per rescue pass on every worker -----------------------------------
def test_the_heartbeat_prunes_one_batch_per_rescue_pass():
    rows("success", 7, age=2 * DAYS)
    rows("success", 2, age=dt.timedelta(hours=1), prefix="recent")
    settings = build_settings({"PRUNE_AFTER": 86400, "PRUNE_BATCH_SIZE": 5})
    heartbeat = Heartbeat(
        broker=app.broker, settings=settings, worker_id="w-prune", info={},
        running=lambda: 0, on_cancel=lambda uuids: None,
    )  # fmt: skip
    heartbeat.tick()  # the first tick is a rescue pass
    assert counts()["success"] == 4
    heartbeat.tick()  # not yet time for the next pass
    assert counts()["success"] == 4
    heartbeat._next_rescue = 0.0
    heartbeat.tick()
    assert counts()["success"] == 2  # the recent ones stay
