"""Enqueueing and reading results through Django's public Tasks API, and every
validation error that API defines. No worker runs here."""

from __future__ import annotations

import datetime as dt
import sys

import pytest
from asgiref.sync import async_to_sync
from django.core import checks
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from tests.djangotasks import skip_without_framework

skip_without_framework()

from django_qtasks.models import TaskRecord  # noqa: E402
from tests.djangotasks.taskapp import tasks  # noqa: E402
from tests.djangotasks.taskapp.api import (  # noqa: E402
    InvalidTask,
    InvalidTaskBackend,
    TaskResultDoesNotExist,
    TaskResultMismatch,
    TaskResultStatus,
    default_task_backend,
    task,
    task_backends,
    task_enqueued,
)

pytestmark = pytest.mark.django_db

ADD = "django.tasks:tests.djangotasks.taskapp.tasks.add"


def module_level(x: int) -> int:
    return x


def test_the_backend_supports_everything_django_asks_about() -> None:
    backend = task_backends["default"]
    assert type(backend).__name__ == "QTasksBackend"
    assert backend.supports_defer
    assert backend.supports_async_task
    assert backend.supports_get_result
    assert backend.supports_priority


def test_enqueue_stores_a_row_and_returns_a_ready_result() -> None:
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    assert (result.args, result.kwargs, result.backend) == ([2, 3], {}, "default")
    assert result.task is tasks.add
    assert result.enqueued_at is not None
    assert (result.started_at, result.finished_at, result.last_attempted_at) == (None,) * 3
    assert (result.errors, result.worker_ids, result.attempts) == ([], [], 0)
    assert not result.is_finished
    with pytest.raises(ValueError, match="not finished"):
        _ = result.return_value
    row = TaskRecord.objects.get(uuid=result.id)
    assert (row.task_name, row.status, row.queue, row.priority) == (ADD, "new", "default", 0)
    assert row.tags == ["backend:default"]


def test_the_result_of_enqueue_is_the_one_the_row_gives() -> None:
    # enqueue() builds a new row's result by a shortcut past Django's constructor: it
    # must equal the general mapping of the stored row, field for field.
    from django_qtasks import app
    from django_qtasks.contrib.django_tasks import to_task_result

    result = tasks.add.enqueue(2, 3)
    row = app.get(result.id)
    assert row is not None
    assert result == to_task_result(row, tasks.add, "default", as_given=True)
    assert type(result) is type(to_task_result(row, tasks.add, "default", as_given=True))


def test_get_result_and_refresh_read_the_row() -> None:
    result = tasks.add.enqueue(1, b=2)
    again = tasks.add.get_result(result.id)
    assert (again.id, again.status, again.args, again.kwargs) == (
        result.id,
        TaskResultStatus.READY,
        [1],
        {"b": 2},
    )
    assert again.task.func is tasks.add.func
    assert default_task_backend.get_result(result.id).id == result.id
    TaskRecord.objects.filter(uuid=result.id).update(status="process", attempt=1, worker_id="w1")
    result.refresh()
    assert (result.status, result.worker_ids, result.attempts) == (
        TaskResultStatus.RUNNING,
        ["w1"],
        1,
    )


def test_using_sets_priority_queue_and_run_after() -> None:
    later = timezone.now() + dt.timedelta(hours=1)
    result = tasks.record.using(priority=42, queue_name="other", run_after=later).enqueue("k")
    row = TaskRecord.objects.get(uuid=result.id)
    assert (row.priority, row.queue, row.run_after) == (42, "other", later)
    assert result.task.priority == 42
    stored = tasks.record.get_result(result.id)
    assert (stored.task.priority, stored.task.queue_name, stored.task.run_after) == (
        42,
        "other",
        later,
    )


def test_arguments_are_normalised_as_django_does() -> None:
    result = tasks.add.enqueue((1, 2), data=b"bytes")
    assert (result.args, result.kwargs) == ([[1, 2]], {"data": "bytes"})
    row = TaskRecord.objects.get(uuid=result.id)
    assert (row.args, row.kwargs) == ([[1, 2]], {"data": "bytes"})


def test_a_non_json_argument_is_refused_and_nothing_is_stored() -> None:
    with pytest.raises(TypeError, match="argument 'when'"):
        tasks.add.enqueue(1, when=dt.date(2020, 1, 1))
    assert not TaskRecord.objects.exists()


def test_enqueue_joins_the_callers_transaction() -> None:
    with transaction.atomic():
        result = tasks.add.enqueue(1, 2)
        transaction.set_rollback(True)
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(result.id)


def test_task_enqueued_is_sent_with_the_result() -> None:
    seen = []

    def receiver(sender: type, task_result: object, **kwargs: object) -> None:
        seen.append((sender, task_result))

    task_enqueued.connect(receiver)
    try:
        result = tasks.add.enqueue(1, 2)
    finally:
        task_enqueued.disconnect(receiver)
    assert seen == [(type(task_backends["default"]), result)]


@pytest.mark.django_db(transaction=True)
def test_aenqueue_and_aget_result() -> None:
    async def scenario() -> tuple[object, ...]:
        result = await tasks.async_add.aenqueue(2, 2)
        again = await tasks.async_add.aget_result(result.id)
        await result.arefresh()
        return result, again

    result, again = async_to_sync(scenario)()
    assert again.id == result.id  # type: ignore[attr-defined]
    assert again.status == TaskResultStatus.READY  # type: ignore[attr-defined]
    assert TaskRecord.objects.filter(uuid=again.id).exists()  # type: ignore[attr-defined]


# -- errors Django's API defines -------------------------------------------------------
def test_unknown_and_malformed_ids_do_not_exist() -> None:
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result("00000000-0000-0000-0000-000000000000")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result("not-a-uuid")
    with pytest.raises(TaskResultDoesNotExist):
        async_to_sync(tasks.add.aget_result)("not-a-uuid")


def test_a_result_of_another_task_is_a_mismatch() -> None:
    result = tasks.add.enqueue(1, 2)
    with pytest.raises(TaskResultMismatch):
        tasks.record.get_result(result.id)


def test_rows_not_enqueued_through_django_are_not_django_results() -> None:
    from django_qtasks import app

    ours = app.add_task("tests.record", "x")
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(str(ours.uuid))


@pytest.mark.parametrize("priority", [-101, 101, 1.5])
def test_priority_out_of_range_or_fractional(priority: float) -> None:
    with pytest.raises(InvalidTask, match="priority"):
        tasks.add.using(priority=priority)  # type: ignore[arg-type]


def test_a_queue_not_in_queues_is_invalid() -> None:
    with pytest.raises(InvalidTask, match="Queue 'elsewhere'"):
        tasks.add.using(queue_name="elsewhere")


def test_a_naive_run_after_is_invalid() -> None:
    with pytest.raises(InvalidTask, match="aware"):
        tasks.add.using(run_after=dt.datetime(2030, 1, 1))


def test_run_after_cannot_be_set_in_the_decorator() -> None:
    with pytest.raises(TypeError, match="run_after"):
        task(run_after=timezone.now())(module_level)


def test_a_nested_function_is_invalid() -> None:
    def inner() -> None: ...

    with pytest.raises(InvalidTask, match="module level"):
        task(inner)


def test_takes_context_needs_a_context_argument() -> None:
    with pytest.raises(InvalidTask, match="context"):
        task(takes_context=True)(module_level)


def test_an_unknown_backend_alias_is_refused() -> None:
    with pytest.raises(InvalidTaskBackend):
        tasks.add.using(backend="nowhere")


# -- errors of ours, raised as Django's InvalidTask ------------------------------------
def test_a_task_outside_installed_apps_is_invalid() -> None:
    with pytest.raises(InvalidTask, match="not in an installed app"):
        task(module_level)


def test_a_queue_qtasks_does_not_allow_is_invalid() -> None:
    with (
        override_settings(QTASKS={"QUEUES": ["default"]}),
        pytest.raises(InvalidTask, match=r"QTASKS\['QUEUES'\]"),
    ):
        tasks.record_other.enqueue("x")
    assert not TaskRecord.objects.exists()


def test_a_task_is_checked_again_when_the_settings_change() -> None:
    """Checks run once per Task object and settings, not once per enqueue: a queue
    allowed before QTASKS changed is refused after, and allowed again after that."""
    tasks.record_other.enqueue("before")
    with (
        override_settings(QTASKS={"QUEUES": ["default"]}),
        pytest.raises(InvalidTask, match=r"QTASKS\['QUEUES'\]"),
    ):
        tasks.record_other.enqueue("during")
    tasks.record_other.enqueue("after")
    stored = TaskRecord.objects.order_by("created_at").values_list("args", flat=True)
    assert list(stored) == [["before"], ["after"]]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"max_retries": 2**31}, "max_retries must be an integer from 0 to 1,000,000"),
        ({"max_time": 0}, "max_time"),
        ({"retry_backoff": -1}, "retry_backoff"),
        ({"retry_on_exc": ["ValueError"]}, "retry_on_exc"),
    ],
)
def test_our_task_options_are_validated(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidTask, match=message):
        task(**options)(tasks.add.func)


def test_qtasks_options_are_fields_of_the_task() -> None:
    assert (tasks.flaky.max_retries, tasks.flaky.retry_backoff) == (2, 0)  # type: ignore[attr-defined]
    assert tasks.not_retried.retry_on_exc == (ConnectionError,)  # type: ignore[attr-defined]
    assert tasks.too_slow.max_time == 0.2  # type: ignore[attr-defined]


# -- system checks ---------------------------------------------------------------------
def test_the_test_configuration_passes_the_checks() -> None:
    ours = [m for m in checks.run_checks() if m.id and m.id.startswith("django_qtasks")]
    assert ours == []


def test_checks_report_misconfiguration() -> None:
    bad = {
        "BACKEND": "django_qtasks.backends.QTasksBackend",
        "QUEUES": ["default", "no spaces please", "reports"],
        "OPTIONS": {"database": "other"},
    }
    with override_settings(TASKS={"default": bad}, QTASKS={"QUEUES": ["default"]}):
        ids = sorted(m.id for m in task_backends["default"].check())
    assert ids == ["django_qtasks.E102", "django_qtasks.E103", "django_qtasks.E104"]


def test_without_a_tasks_framework_the_import_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    import django

    monkeypatch.setattr(django, "VERSION", (5, 2, 0, "final", 0))
    monkeypatch.setitem(sys.modules, "django_tasks", None)  # "not installed"
    monkeypatch.delitem(sys.modules, "django_qtasks.contrib.django_tasks")
    monkeypatch.delitem(sys.modules, "django_qtasks.contrib.backends")
    with pytest.raises(ImportError, match=r"django-qtasks\[tasks\]") as info:
        importlib.import_module("django_qtasks.contrib.backends")
    assert info.value.name == "django_tasks"  # what the AppConfig's guard looks for
