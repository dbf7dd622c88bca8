"""Concurrency limits on a real database: options, what a row stores, and the claim.

Every claim goes through ``app.broker.storage.claim()``, the worker's own
call. Nothing finishes here unless a test says so, so "running" is simply ``process``.
The limit under real worker processes is in tests/acceptance/test_concurrency_limits.py.
"""

from __future__ import annotations

import threading
import uuid as uuid_lib
from collections import Counter
from typing import Any

import pytest
from django.db import connection
from django.db.models import Count

from django_qtasks import app
from django_qtasks.api.queue_tasks import QueueTasks
from django_qtasks.api.task import Outcome, Task
from django_qtasks.exceptions import InvalidTaskCall, TaskRegistrationError
from django_qtasks.models import TaskRecord, TaskStatus
from django_qtasks.settings import QTasksSettings
from tests.helpers import analyze, in_threads
from tests.integration.test_claim import explain

pytestmark = pytest.mark.django_db


def claim(limit: int, worker_id: str = "w-test", **options: Any) -> list[Task]:
    return app.broker.storage.claim(worker_id, None, limit, **options)


def running() -> Counter[tuple[str, str | None]]:
    rows = TaskRecord.objects.filter(status=TaskStatus.PROCESS)
    return Counter(rows.values_list("task_name", "concurrency_key"))


def finish(task: Task) -> None:
    assert app.broker.storage.finish(task, Outcome(status=TaskStatus.SUCCESS, returning=None))


# -- options and what a row stores --------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_concurrency": 0}, "max_concurrency must be an integer >= 1"),
        ({"max_concurrency": True}, "max_concurrency must be an integer >= 1"),
        ({"max_concurrency": "2"}, "max_concurrency must be an integer >= 1"),
        ({"concurrency_key": "smtp"}, "concurrency_key needs max_concurrency"),
        ({"max_concurrency": 1, "concurrency_key": ""}, "non-empty string"),
        ({"max_concurrency": 1, "concurrency_key": 7}, "non-empty string"),
    ],
)
def test_bad_limits_fail_at_registration(options: dict[str, Any], message: str) -> None:
    local_app = QueueTasks(QTasksSettings())
    with pytest.raises(TaskRegistrationError, match=message):
        local_app.task(name="t.limited", **options)(lambda: None)


def test_a_row_stores_its_group_and_limit() -> None:
    plain = app.add_task("tests.record", "p")
    whole = app.add_task("tests.limited", "w")
    keyed = app.add_task("tests.limited_per_account", 7, "k")
    chosen = app.add_task("tests.limited_per_account", 7, "c", concurrency_key="vip")
    stored = {
        row.uuid: (row.concurrency_key, row.max_concurrency) for row in TaskRecord.objects.all()
    }
    assert stored == {
        plain.uuid: (None, None),
        whole.uuid: ("", 1),
        keyed.uuid: ("account:7", 1),
        chosen.uuid: ("vip", 1),
    }
    assert (keyed.concurrency_key, keyed.max_concurrency) == ("account:7", 1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: app.add_task("tests.record", "x", concurrency_key="k"), "needs a task registered"),
        (lambda: app.add_task("tests.limited", "x", concurrency_key=""), "non-empty string"),
        (lambda: app.add_task("tests.limited", "x", concurrency_key="k" * 256), "at most 255"),
        (lambda: app.add_task("tests.limited_per_account", key="x"), "function of task"),
        (lambda: app.add_task("tests.limited_per_account", None, "x"), None),
    ],
)
def test_bad_keys_fail_at_add_task_and_store_nothing(call: Any, message: str | None) -> None:
    if message is None:  # the function's key is "account:None": a valid string
        call()
        assert TaskRecord.objects.get().concurrency_key == "account:None"
        return
    with pytest.raises(InvalidTaskCall, match=message):
        call()
    assert not TaskRecord.objects.exists()


# -- the claim ----------------------------------------------------------------------------
def test_a_claim_keeps_only_what_the_limit_allows_and_undoes_the_rest_exactly() -> None:
    uuids = [app.add_task("tests.limited", f"k{n}").uuid for n in range(4)]
    # Two of them wait for a retry, after attempts of their own.
    TaskRecord.objects.filter(uuid__in=uuids[2:]).update(status=TaskStatus.RETRY, attempt=2)
    before = {row.uuid: row for row in TaskRecord.objects.all()}

    got = claim(10)

    assert [t.uuid for t in got] == [uuids[0]]
    assert running() == {("tests.limited", ""): 1}
    for row in TaskRecord.objects.exclude(uuid=uuids[0]):
        old = before[row.uuid]
        assert (row.status, row.attempt, row.worker_id, row.started_at) == (
            old.status, old.attempt, "", None
        )  # fmt: skip


def test_a_full_group_is_skipped_until_one_of_it_finishes() -> None:
    for n in range(3):
        app.add_task("tests.limited", f"k{n}")
    first = claim(5)
    assert len(first) == 1
    assert claim(5, worker_id="w-other") == []  # the hint: nothing claimed, nothing undone
    assert set(TaskRecord.objects.values_list("attempt", flat=True)) == {0, 1}
    finish(first[0])
    second = claim(5, worker_id="w-other")
    assert len(second) == 1
    assert second[0].uuid != first[0].uuid


def test_a_limit_of_two_lets_two_run() -> None:
    for n in range(5):
        app.add_task("tests.limited_two", f"k{n}")
    assert len(claim(1)) == 1
    assert len(claim(10, worker_id="w-2")) == 1
    assert claim(10, worker_id="w-3") == []
    assert running() == {("tests.limited_two", ""): 2}


def test_different_keys_run_in_parallel_and_one_key_never_exceeds_its_limit() -> None:
    for account in (1, 1, 2, 2, 3):
        app.add_task("tests.limited_per_account", account, f"a{account}")
    got = claim(10)
    assert sorted(t.concurrency_key or "" for t in got) == ["account:1", "account:2", "account:3"]
    assert claim(10, worker_id="w-2") == []


def test_a_batch_whose_limited_rows_were_handed_back_fills_up_with_other_tasks() -> None:
    for n in range(3):
        app.add_task("tests.limited", f"l{n}", priority=10)
    plain = {app.add_task("tests.record", f"p{n}").uuid for n in range(3)}
    got = claim(3)
    assert len(got) == 3
    assert [t.task_name for t in got] == ["tests.limited", "tests.record", "tests.record"]
    assert {t.uuid for t in got[1:]} <= plain


def test_tasks_without_a_limit_cost_one_statement_and_limited_ones_a_short_check() -> None:
    from django.test.utils import CaptureQueriesContext

    app.add_task("tests.record", "p")
    with CaptureQueriesContext(connection) as plain:
        assert len(claim(5)) == 1
    mysql = connection.vendor == "mysql"
    # MariaDB/MySQL claim in two statements (no UPDATE ... RETURNING): lock and read, mark.
    claim_statements = 2 if mysql else 1
    plain_statements = [q["sql"] for q in plain if "SAVEPOINT" not in q["sql"]]
    assert len(plain_statements) == claim_statements, [s[:60] for s in plain_statements]
    app.add_task("tests.limited", "l")
    with CaptureQueriesContext(connection) as limited:
        assert len(claim(5)) == 1
    # The claim, then the check: lock (or the write lock), count; no hand-back needed.
    # MariaDB's named lock is taken before the check's transaction and released after.
    statements = [q["sql"] for q in limited if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == claim_statements + (3 if mysql else 2), statements
    lock = statements[claim_statements]
    assert "pg_advisory_xact_lock" in lock or "GET_LOCK" in lock or connection.vendor == "sqlite"


@pytest.mark.postgres
def test_the_hint_counts_running_rows_through_an_index() -> None:
    for n in range(3):
        app.add_task("tests.limited", f"l{n}")
    template = TaskRecord.objects.first()
    assert template is not None
    # Many finished rows of the group, and many running tasks without a limit: the
    # count reads neither.
    TaskRecord.objects.bulk_create(
        [
            TaskRecord(task_name=name, status=status, run_after=template.run_after,
                       created_at=template.created_at, updated_at=template.updated_at,
                       concurrency_key=key, max_concurrency=limit, worker_id="w-busy")
            for name, status, key, limit, count in [
                ("tests.limited", TaskStatus.SUCCESS, "", 1, 20_000),
                ("tests.record", TaskStatus.PROCESS, None, None, 2_000),
            ]
            for _ in range(count)
        ],
        batch_size=2_000,
    )  # fmt: skip
    analyze(TaskRecord._meta.db_table)
    seen: list[tuple[str, list[Any]]] = []

    def spy(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.lstrip().upper().startswith("WITH"):
            seen.append((sql, list(params)))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        claim(2)
    plan = explain(*seen[0])
    # The count reads running rows only, through one of the two partial indexes of
    # running rows (which one depends on the statistics).
    assert "qtasks_limited_running_idx" in plan or "qtasks_running_idx" in plan, plan
    assert "Seq Scan" not in plan, plan


# -- races --------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("task_name", ["tests.limited", "tests.limited_two"])
def test_racing_claims_never_keep_more_than_the_limit(task_name: str) -> None:
    """Four connections claim batches of one group at once, over and over, and nothing
    finishes: the hint alone would let a batch take five. The check keeps the limit."""
    limit = app.get_task(task_name).options.max_concurrency
    app.add_tasks([(task_name, (f"k{n}",), {}) for n in range(60)])
    start = threading.Barrier(4, timeout=30)
    kept: list[uuid_lib.UUID] = []

    def worker(worker_id: str) -> None:
        start.wait()
        for _ in range(6):
            kept.extend(t.uuid for t in claim(5, worker_id=worker_id))

    in_threads(worker, [(f"w-{n}",) for n in range(4)], on_error=start.abort)
    assert len(kept) == limit
    assert running() == {(task_name, ""): limit}
    assert set(TaskRecord.objects.filter(status=TaskStatus.PROCESS).values_list(
        "uuid", flat=True)) == set(kept)  # fmt: skip
    waiting = TaskRecord.objects.exclude(status=TaskStatus.PROCESS)
    assert list(waiting.values("status", "attempt", "worker_id").annotate(n=Count("uuid"))) == [
        {"status": "new", "attempt": 0, "worker_id": "", "n": 60 - limit}
    ]


# -- the admin ----------------------------------------------------------------------------
def test_the_admin_task_page_shows_the_limit(admin_client: Any) -> None:
    from django.urls import reverse

    def page(task: Task) -> str:
        url = reverse("admin:django_qtasks_taskrecord_change", args=[task.uuid])
        response = admin_client.get(url)
        assert response.status_code == 200
        return str(response.content.decode())

    assert "at most 1 of this task at a time" in page(app.add_task("tests.limited", "l"))
    keyed = page(app.add_task("tests.limited_per_account", 7, "k"))
    assert "at most 1 at a time with key account:7" in keyed
    assert "concurrency limit" not in page(app.add_task("tests.record", "p")).lower()


# -- in the caller's thread ---------------------------------------------------------------
def test_run_pending_tasks_runs_limited_tasks_one_after_another() -> None:
    from django_qtasks.contrib.testing import run_pending_tasks

    for n in range(3):
        app.add_task("tests.limited", f"l{n}")
    done = run_pending_tasks()
    assert [(t.status, t.attempt) for t in done] == [("success", 1)] * 3
