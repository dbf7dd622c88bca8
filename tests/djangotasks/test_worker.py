"""Django tasks run by our worker (in-process, burst mode): results, failures,
retries, deferral, priority, async and context tasks, signals, and rows that name
something that is not a Django task."""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import Any

import pytest
from django.utils import timezone

from tests.djangotasks import skip_without_framework

skip_without_framework()

from django_qtasks import app  # noqa: E402
from django_qtasks.models import TaskRecord  # noqa: E402
from tests.djangotasks.taskapp import tasks  # noqa: E402
from tests.djangotasks.taskapp.api import (  # noqa: E402
    TaskResultStatus,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)
from tests.helpers import wait_until  # noqa: E402
from tests.testapp.models import Execution  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)


def test_success(run_worker: Any) -> None:
    result = tasks.add.enqueue(2, 3)
    assert run_worker() == 0
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.is_finished
    assert result.return_value == 5
    assert (result.errors, result.attempts, len(result.worker_ids)) == ([], 1, 1)
    assert result.enqueued_at <= result.started_at <= result.finished_at  # type: ignore[operator]
    assert result.last_attempted_at == result.started_at
    assert tasks.add.get_result(result.id).return_value == 5


def test_return_values_are_normalised_as_django_does(run_worker: Any) -> None:
    result = tasks.returns_bytes_and_tuples.enqueue()
    run_worker()
    result.refresh()
    assert result.return_value == {"data": "bytes", "pair": [1, 2]}


def test_a_result_that_is_not_json_fails_without_retries(run_worker: Any) -> None:
    result = tasks.returns_object.enqueue()
    run_worker()
    result.refresh()
    assert (result.status, result.attempts) == (TaskResultStatus.FAILED, 1)
    assert result.errors[0].exception_class_path.endswith("NotJSONResult")


def test_a_result_nested_past_the_normaliser_fails_as_not_json(run_worker: Any) -> None:
    result = tasks.returns_deep_list.enqueue(5000)  # Django's normalize_json recurses
    run_worker()
    result.refresh()
    assert (result.status, result.attempts) == (TaskResultStatus.FAILED, 1)
    assert result.errors[0].exception_class_path.endswith("NotJSONResult")
    assert "nested too deep to be stored as JSON" in result.errors[0].traceback


def test_failure_keeps_the_exception_class_and_traceback(run_worker: Any) -> None:
    result = tasks.fail.enqueue("f")
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.is_finished
    [error] = result.errors
    assert error.exception_class_path == "builtins.ValueError"
    assert error.exception_class is ValueError
    assert "Traceback (most recent call last)" in error.traceback
    assert "ValueError: boom f" in error.traceback
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value


def test_retries_count_attempts_and_keep_each_error(run_worker: Any) -> None:
    result = tasks.flaky.enqueue("r", failures=1)
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.attempts == 2
    assert [e.exception_class_path for e in result.errors] == ["builtins.ConnectionError"]
    assert "attempt 1 failed" in result.errors[0].traceback
    # What the task saw through Django's TaskContext on its second attempt:
    assert result.return_value == {
        "attempt": 2,
        "attempts": 2,
        "id": result.id,
        "status": "RUNNING",
        "errors": 1,
    }
    assert list(Execution.objects.filter(key="r").values_list("attempt", flat=True)) == [1, 2]


def test_retries_run_out(run_worker: Any) -> None:
    result = tasks.flaky.enqueue("out", failures=10)
    run_worker()
    result.refresh()
    assert (result.status, result.attempts, len(result.errors)) == (
        TaskResultStatus.FAILED,
        3,  # max_retries=2: the first attempt and two more
        3,
    )
    assert Execution.objects.filter(key="out").count() == 3


def test_retry_on_exc_limits_what_is_retried(run_worker: Any) -> None:
    result = tasks.not_retried.enqueue("n")
    run_worker()
    result.refresh()
    assert (result.status, result.attempts) == (TaskResultStatus.FAILED, 1)


def test_max_time_ends_the_task(run_worker: Any) -> None:
    result = tasks.too_slow.enqueue()
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert "TaskTimeLimitExceeded" in result.errors[0].exception_class_path


def test_a_deferred_task_waits_for_run_after(run_worker: Any) -> None:
    later = tasks.record.using(run_after=timezone.now() + dt.timedelta(hours=1)).enqueue("late")
    soon_at = timezone.now() + dt.timedelta(milliseconds=300)
    soon = tasks.record.using(run_after=soon_at).enqueue("soon")
    run_worker()
    later.refresh()
    soon.refresh()
    assert later.status == soon.status == TaskResultStatus.READY
    assert later.task.run_after is not None
    wait_until(lambda: timezone.now() >= soon_at, message="run_after to pass")
    run_worker()
    soon.refresh()
    later.refresh()
    assert soon.status == TaskResultStatus.SUCCESSFUL
    assert soon.started_at >= soon_at  # type: ignore[operator]
    assert later.status == TaskResultStatus.READY


def test_higher_priority_runs_first(run_worker: Any) -> None:
    for key, priority in [("low", -10), ("mid", 0), ("top", 100), ("high", 10), ("min", -100)]:
        tasks.record.using(priority=priority).enqueue(key)
    tasks.record_other.using(priority=50).enqueue("other-queue")
    run_worker(concurrency=1)
    ran = list(Execution.objects.order_by("id").values_list("key", flat=True))
    assert ran == ["top", "other-queue", "high", "mid", "low", "min"]


def test_async_tasks(run_worker: Any) -> None:
    plain = tasks.async_add.enqueue(20, 22)
    with_context = tasks.async_context.enqueue("ctx")
    run_worker()
    plain.refresh()
    with_context.refresh()
    assert plain.return_value == 42
    assert with_context.return_value == ["ctx", 1, with_context.id]


def test_django_signals_are_sent_by_the_worker(run_worker: Any) -> None:
    seen: list[tuple[str, type, str, str, int]] = []

    def receiver(name: str) -> Any:
        def receive(sender: type, task_result: Any, **kwargs: Any) -> None:
            seen.append((name, sender, task_result.id, task_result.status, task_result.attempts))

        return receive

    receivers = {
        signal: receiver(name)
        for signal, name in [
            (task_enqueued, "enqueued"),
            (task_started, "started"),
            (task_finished, "finished"),
        ]
    }
    for signal, receive in receivers.items():
        signal.connect(receive)
    try:
        ok = tasks.add.enqueue(1, 1)
        flaky = tasks.flaky.enqueue("s", failures=1)
        app.add_task("tests.record", "ours")  # not a Django task: no Django signals
        run_worker(concurrency=1)
    finally:
        for signal, receive in receivers.items():
            signal.disconnect(receive)
    backend = type(task_backends["default"])
    assert [s for s in seen if s[2] == ok.id] == [
        ("enqueued", backend, ok.id, "READY", 0),
        ("started", backend, ok.id, "RUNNING", 1),
        ("finished", backend, ok.id, "SUCCESSFUL", 1),
    ]
    assert [s for s in seen if s[2] == flaky.id] == [
        ("enqueued", backend, flaky.id, "READY", 0),
        ("started", backend, flaky.id, "RUNNING", 1),
        ("finished", backend, flaky.id, "READY", 1),  # the attempt ended; a retry waits
        ("started", backend, flaky.id, "RUNNING", 2),
        ("finished", backend, flaky.id, "SUCCESSFUL", 2),
    ]
    assert len(seen) == 8


def test_a_failing_signal_receiver_does_not_break_the_worker(run_worker: Any) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    task_started.connect(broken)
    task_finished.connect(broken)
    try:
        result = tasks.add.enqueue(1, 2)
        assert run_worker() == 0
    finally:
        task_started.disconnect(broken)
        task_finished.disconnect(broken)
    result.refresh()
    assert result.return_value == 3


# -- rows that do not name a Django task -----------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "os.system",  # a callable of the standard library
        "tests.djangotasks.taskapp.tasks.plain_function",  # a function in an installed app
        "tests.djangotasks.untrusted.run",  # a module outside every installed app
        "tests.djangotasks.taskapp.tasks.missing",
        "tests.djangotasks.taskapp.nonexistent.task",
        "tests.djangotasks.taskapp.tasks",
        ".relative.name",
    ],
)
def test_a_row_naming_anything_else_ends_error_and_nothing_runs(
    run_worker: Any, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *args: calls.append(args))
    monkeypatch.delenv("QTASKS_UNTRUSTED_IMPORTED", raising=False)
    row = app.add_task(f"django.tasks:{path}", "echo owned")
    assert run_worker() == 0
    done = app.get(row.uuid)
    assert done is not None
    assert done.status == "error"
    assert done.errors[0]["type"] == "django_qtasks.exceptions.TaskNotRegistered"
    assert calls == []
    assert not Execution.objects.exists()
    assert "tests.djangotasks.untrusted" not in sys.modules
    assert "QTASKS_UNTRUSTED_IMPORTED" not in os.environ


def test_django_tasks_are_in_the_admin(run_worker: Any, admin_client: Any) -> None:
    result = tasks.add.enqueue(4, 5)
    run_worker()
    listing = admin_client.get("/admin/django_qtasks/taskrecord/")
    assert listing.status_code == 200
    assert "django.tasks:tests.djangotasks.taskapp.tasks.add" in listing.content.decode()
    detail = admin_client.get(f"/admin/django_qtasks/taskrecord/{result.id}/change/")
    assert detail.status_code == 200
    assert TaskRecord.objects.get(uuid=result.id).returning == 9
