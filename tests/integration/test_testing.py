"""django_qtasks.testing: immediate mode, the drain helper, run_task and the assertions.

Where it matters, a task is run both ways, by a real (in-process) worker and by the
helpers, and the stored rows are compared: the helpers must be the worker's code path.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.test import TestCase, override_settings

from django_qtasks import Task, app
from django_qtasks.contrib.testing import (
    EnqueuedTasks,
    NotWaiting,
    TooManyTasks,
    assert_task_enqueued,
    assert_task_not_enqueued,
    immediate,
    run_pending_tasks,
    run_task,
)
from django_qtasks.exceptions import ConfigurationError, TaskNotFound, WouldDeadlock
from django_qtasks.models import TaskRecord
from django_qtasks.settings import build_settings
from django_qtasks.signals import task_finished, task_started
from tests.testapp import middlewares, tasks
from tests.testapp.models import Execution


@app.task(name="tests.testing.backoff", retry=2, retry_backoff=60)
def with_backoff(key: str) -> int:
    """Fails twice with a one-minute backoff, then succeeds."""
    Execution.objects.create(key=key)
    runs = Execution.objects.filter(key=key).count()
    if runs <= 2:
        raise ConnectionError(f"down ({runs})")
    return runs


@app.task(name="tests.testing.chain")
def chain(n: int) -> int:
    """Enqueues the next link until ``n`` is 0."""
    if n > 0:
        chain.add_task(n - 1)
    return n


@app.task(name="tests.testing.forever")
def forever() -> None:
    forever.add_task()


@app.task(name="tests.testing.label")
def label(text: str) -> str:
    return text


def summary(task: Task | None, mode: str = "") -> tuple[Any, ...]:
    """What a worker records about how a task went, without times, ids and ``mode``."""
    assert task is not None
    errors = [(e["attempt"], e["type"], e["message"].replace(mode, "")) for e in task.errors]
    return task.status, task.attempt, task.returning, errors


# -- immediate mode -------------------------------------------------------------------------
@pytest.mark.django_db
def test_immediate_runs_the_task_in_add_task_and_returns_it_finished() -> None:
    seen: list[str] = []

    def on_start(task: Task, **_: Any) -> None:
        seen.append(f"start {task.status}")

    def on_finish(task: Task, outcome: Any, **_: Any) -> None:
        seen.append(f"finish {outcome.status}")

    task_started.connect(on_start)
    task_finished.connect(on_finish)
    try:
        with immediate():
            task = tasks.add.add_task(2, 3)
    finally:
        task_started.disconnect(on_start)
        task_finished.disconnect(on_finish)
    assert summary(task) == ("success", 1, 5, [])
    assert task.worker_id
    assert task.finished_at is not None
    assert app.get(task.uuid) == task, "the snapshot is the stored row"
    assert seen == ["start process", "finish success"]


@pytest.mark.django_db
def test_the_mode_setting_is_immediate_mode() -> None:
    with override_settings(QTASKS={**settings.QTASKS, "MODE": "immediate"}):
        assert tasks.add(1, 1).add_task().status == "success"
    assert tasks.add.add_task(1, 1).status == "new"


def test_the_mode_setting_is_checked() -> None:
    with pytest.raises(
        ConfigurationError, match=r"QTASKS\['MODE'\] must be 'worker' or 'immediate'"
    ):
        build_settings({"MODE": "eager"})


@pytest.mark.django_db(transaction=True)
def test_immediate_mode_records_retries_and_failures_like_the_worker(run_worker: Any) -> None:
    calls = [
        (tasks.flaky, 2),  # two failures, then success
        (tasks.always_fail, None),  # retries run out
        (tasks.fail_value, None),  # not an error it retries on
        (tasks.bad_result_with_retries, None),  # a result JSON refuses is never retried
    ]

    def enqueue(mode: str) -> list[Task]:
        return [
            task.add_task(f"{mode}-{n}", *([] if extra is None else [extra]))
            for n, (task, extra) in enumerate(calls)
        ]

    by_worker = enqueue("worker")
    assert run_worker() == 0
    with immediate():
        by_helper = enqueue("immediate")
    worker_rows = [summary(app.get(t.uuid), mode="worker") for t in by_worker]
    assert [summary(t, mode="immediate") for t in by_helper] == worker_rows
    assert summary(by_helper[0])[:2] == ("success", 3)
    assert Execution.objects.filter(key="immediate-1").count() == 2


@pytest.mark.django_db
def test_immediate_mode_runs_retries_at_once_and_keeps_the_backoff_on_record() -> None:
    with immediate():
        task = with_backoff.add_task("b")
    assert summary(task) == (
        "success",
        3,
        3,
        [(1, "builtins.ConnectionError", "down (1)"), (2, "builtins.ConnectionError", "down (2)")],
    )
    assert task.run_after > task.finished_at, "the worker's backoff is what was stored"


@pytest.mark.django_db
def test_non_json_arguments_fail_in_immediate_mode_as_with_the_worker() -> None:
    messages = []
    for mode in (nullcontext(), immediate()):
        with mode, pytest.raises(TypeError) as info:
            tasks.add.add_task(object(), 1)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "positional argument 0 (object) is not JSON-serializable" in messages[0]
    assert not TaskRecord.objects.exists()


@pytest.mark.django_db
def test_arguments_and_results_make_the_json_round_trip() -> None:
    with immediate():
        task = label.add_task(text=("a", "tuple"))  # type: ignore[arg-type]
    assert task.status == "success"
    assert task.returning == ["a", "tuple"], "the function got the stored (JSON) arguments"


@pytest.mark.django_db
def test_immediate_mode_runs_the_middlewares() -> None:
    path = "tests.testapp.middlewares.Recorder"
    middlewares.CALLS.clear()
    qtasks = {**settings.QTASKS, "MIDDLEWARES_BEFORE": [path], "MIDDLEWARES_AFTER": [path]}
    with override_settings(QTASKS=qtasks), immediate():
        tasks.add.add_task(1, 2)
    name = tasks.add.name
    assert [("before", name, 1), ("after", name, "success")] == middlewares.CALLS


@pytest.mark.django_db
def test_immediate_mode_enforces_time_limits() -> None:
    with immediate():
        sync = tasks.busy.add_task(30)  # pure Python: only the Timekeeper stops it
        async_ = tasks.async_slow.add_task()
    for task in (sync, async_):
        assert task.status == "error"
        assert task.errors[-1]["type"] == "django_qtasks.timelimit.TaskTimeLimitExceeded"


@pytest.mark.django_db
def test_echo_async_and_generator_tasks_run_in_immediate_mode() -> None:
    with immediate():
        echoed = tasks.echo.add_task("t")
        added = async_to_sync(tasks.async_app_add.add_task)(2, 5)
        generated = tasks.gen.add_task(3)
    assert echoed.returning == {"uuid": str(echoed.uuid), "attempt": 1, "tag": "t"}
    assert echoed.progress == {"done": 1, "total": 2, "message": "half"}
    assert (added.status, added.returning) == ("success", 7)
    assert generated.returning == [0, 1, 2]


@pytest.mark.django_db
def test_tasks_enqueued_by_a_task_run_too() -> None:
    with immediate():
        first = chain.add_task(2)
    assert first.returning == 2
    assert_task_enqueued(chain, args=[0], status="success")
    assert_task_enqueued(chain, count=3)


def enqueue_and_roll_back(key: str) -> None:
    with transaction.atomic():
        tasks.record.add_task(key)
        raise RuntimeError("rolled back")


@pytest.mark.django_db(transaction=True)
def test_inside_atomic_the_task_runs_when_the_transaction_commits() -> None:
    with immediate():
        with transaction.atomic():
            task = tasks.record.add_task("on-commit")
            assert task.status == "new"
            assert not Execution.objects.filter(key="on-commit").exists()
        assert app.get(task.uuid).status == "success"  # type: ignore[union-attr]

        with pytest.raises(RuntimeError, match="rolled back"):
            enqueue_and_roll_back("rolled-back")
    assert not Execution.objects.filter(key="rolled-back").exists()
    assert not TaskRecord.objects.filter(args=["rolled-back"]).exists()


@pytest.mark.django_db
def test_inside_a_test_transaction_on_commit_capture_runs_the_task(
    django_capture_on_commit_callbacks: Any,
) -> None:
    with immediate():
        with django_capture_on_commit_callbacks() as held, transaction.atomic():
            task = tasks.add.add_task(1, 1)
        assert len(held) == 1
        assert app.get(task.uuid).status == "new"  # type: ignore[union-attr]
        with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
            task = tasks.add.add_task(2, 2)
    assert app.get(task.uuid).returning == 4  # type: ignore[union-attr]


@pytest.mark.django_db
def test_timeout_in_immediate_mode() -> None:
    with immediate():
        assert tasks.add.add_task(1, 2, timeout=5).returning == 3
        with pytest.raises(WouldDeadlock), transaction.atomic():
            tasks.add.add_task(1, 2, timeout=5)


@pytest.mark.django_db
def test_immediate_mode_leaves_scheduled_tasks_and_paused_queues_waiting() -> None:
    app.pause_queue("paused")
    with immediate():
        later = tasks.add.add_task(1, 2, run_after=3600)
        held = tasks.add.add_task(1, 3, queue="paused")
        bulk = app.add_tasks([tasks.add(2, 2), tasks.add(3, 3)])
    assert (later.status, held.status) == ("new", "new")
    assert [t.returning for t in bulk] == [4, 6]
    assert run_task(later).returning == 3, "run_task runs a scheduled task now"
    assert run_task(held.uuid).returning == 4, "and one in a paused queue"


@pytest.mark.django_db
def test_a_duplicate_unique_key_runs_nothing() -> None:
    first = tasks.add.add_task(1, 1, unique_key="k", run_after=3600)
    with immediate():
        again = tasks.add.add_task(1, 1, unique_key="k")
    assert again.uuid == first.uuid
    assert again.status == "new"


# -- the drain helper and run_task ----------------------------------------------------------
@pytest.mark.django_db
def test_enqueue_assert_waiting_then_run_and_assert_results() -> None:
    task = tasks.add.add_task(20, 22)
    assert app.get(task.uuid).status == "new"  # type: ignore[union-attr]
    [done] = run_pending_tasks()
    assert (done.uuid, done.status, done.returning) == (task.uuid, "success", 42)
    assert run_pending_tasks() == []


@pytest.mark.django_db
def test_the_drain_helper_runs_in_claim_order_and_only_the_queues_asked() -> None:
    for text, priority, queue in [
        ("a-low", -5, "a"),
        ("b-high", 50, "b"),
        ("a-first", 0, "a"),
        ("a-high", 10, "a"),
        ("a-second", 0, "a"),
    ]:
        label.add_task(text, priority=priority, queue=queue)
    ran = run_pending_tasks(queues="a")
    assert [t.returning for t in ran] == ["a-high", "a-first", "a-second", "a-low"]
    assert_task_enqueued(label, args=["b-high"], queue="b", status="new")
    assert [t.returning for t in run_pending_tasks(queues=["b"])] == ["b-high"]


@pytest.mark.django_db
def test_the_drain_helper_leaves_paused_queues_and_scheduled_tasks() -> None:
    app.pause_queue("paused")
    label.add_task("held", queue="paused")
    label.add_task("later", run_after=3600)
    assert run_pending_tasks() == []
    app.resume_queue("paused")
    assert [t.returning for t in run_pending_tasks()] == ["held"]


@pytest.mark.django_db
def test_until_empty_also_runs_what_the_tasks_enqueue() -> None:
    chain.add_task(3)
    assert [t.returning for t in run_pending_tasks(until_empty=False)] == [3]
    assert [t.returning for t in run_pending_tasks()] == [2, 1, 0]


@pytest.mark.django_db
def test_retries_in_the_drain_helper() -> None:
    task = tasks.flaky.add_task("d", 1)
    [first] = run_pending_tasks(until_empty=False, retries=False)
    assert summary(first)[:2] == ("retry", 1)
    [done] = run_pending_tasks()
    assert summary(done)[:3] == ("success", 2, 2)
    assert done.uuid == task.uuid


@pytest.mark.django_db
def test_a_task_that_enqueues_itself_forever_is_stopped() -> None:
    forever.add_task()
    with pytest.raises(TooManyTasks, match=r"ran 5 tasks and more are ready \(next: "):
        run_pending_tasks(max_tasks=5)


@pytest.mark.django_db
def test_run_task_refuses_what_is_not_waiting() -> None:
    task = tasks.add.add_task(1, 1)
    run_task(task)
    with pytest.raises(NotWaiting, match=r"is 'success': nothing to run"):
        run_task(task)
    with pytest.raises(TaskNotFound):
        run_task("01900000-0000-7000-8000-000000000000")


# -- assertions -----------------------------------------------------------------------------
@pytest.mark.django_db
def test_assert_task_enqueued_matches_as_stored_and_says_what_was_enqueued() -> None:
    tasks.add.add_task(1, 2, priority=5)
    label.add_task(text="hi", queue="mail")
    [task] = assert_task_enqueued(tasks.add, args=(1, 2), kwargs={}, priority=5)
    assert task.args == [1, 2]
    assert_task_enqueued("tests.testing.label", kwargs={"text": "hi"}, queue="mail", count=1)
    assert_task_not_enqueued(tasks.add, args=[2, 1])

    with pytest.raises(AssertionError) as info:
        assert_task_enqueued(tasks.add, args=[2, 1], queue="mail")
    assert str(info.value) == (
        "Expected a task tests.testapp.tasks.add(2, 1) (kwargs: any) with queue='mail' to "
        "be enqueued; 0 matched.\n"
        "Enqueued (2):\n"
        "  tests.testapp.tasks.add(1, 2) queue='default' priority=5 status='new'\n"
        "  tests.testing.label(text='hi') queue='mail' priority=0 status='new'"
    )
    with pytest.raises(AssertionError, match=r"Expected 2 task\(s\) .* 1 matched"):
        assert_task_enqueued(tasks.add, count=2)
    with pytest.raises(AssertionError, match=r"Expected no task tests.testing.label"):
        assert_task_not_enqueued(label)


@pytest.mark.django_db
def test_an_empty_queue_says_so() -> None:
    with pytest.raises(AssertionError, match=r"0 matched.\nNothing was enqueued.$"):
        assert_task_enqueued(tasks.add)


@pytest.mark.django_db
def test_enqueued_tasks_counts_from_when_it_was_made() -> None:
    tasks.add.add_task(0, 0)
    enqueued = EnqueuedTasks()
    assert len(enqueued) == 0
    tasks.add.add_task(1, 1)
    label.add_task("x")
    assert enqueued.names == [tasks.add.name, label.name]
    assert [t.args for t in enqueued.filter(tasks.add)] == [[1, 1]]
    enqueued.assert_enqueued(label, ["x"])
    enqueued.assert_not_enqueued(tasks.add, [0, 0])
    enqueued.clear()
    assert list(enqueued) == []


# -- the pytest fixtures, in this suite (tests/test_pytest_plugin.py runs them elsewhere) ----
def test_the_fixtures(qtasks_immediate: None, qtasks_enqueued: EnqueuedTasks) -> None:
    assert tasks.add.add_task(1, 2).returning == 3
    qtasks_enqueued.assert_enqueued(tasks.add, [1, 2], status="success")


def test_the_drain_fixture(qtasks_run_pending: Any) -> None:
    tasks.add.add_task(1, 2)
    assert [t.returning for t in qtasks_run_pending()] == [3]


# -- Django's TestCase ----------------------------------------------------------------------
@immediate()
class ImmediateTestCase(TestCase):
    def test_tasks_run_in_add_task(self) -> None:
        assert tasks.add.add_task(2, 2).returning == 4

    def test_on_commit_callbacks(self) -> None:
        with self.captureOnCommitCallbacks(execute=True), transaction.atomic():
            task = tasks.add.add_task(3, 3)
            assert task.status == "new"
        assert_task_enqueued(tasks.add, args=[3, 3], status="success")
