"""What django-qtasks makes of Django's Tasks framework: the one import point for it,
the task adapter the worker runs, and the mapping from our rows to ``TaskResult``.

Django 6.0+ ships the framework as ``django.tasks``; on Django 5.2 the ``django-tasks``
backport (``pip install "django-qtasks[tasks]"``) provides the same API as
``django_tasks``. Everything else in django-qtasks imports the framework from here,
so the choice is made once.

A task enqueued through Django's API is a row like any other, named
``django.tasks:<module path>`` (see :data:`PREFIX`). The worker finds its code through
:func:`resolve`, which only ever returns a genuine Django ``Task`` object defined in a
module of an installed app: a row cannot make the worker import or call anything else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sys
from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, Any, TypeAlias

import django
from django.apps import apps

from django_qtasks.api.task import BaseTask, TaskOptions, is_async_callable
from django_qtasks.models import TaskStatus
from django_qtasks.values import Outcome, Task, error_entries
from django_qtasks.worker.context import TaskSelf
from django_qtasks.worker.executor import not_json_result

if TYPE_CHECKING or django.VERSION >= (6, 0):
    from django.tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
    from django.tasks import signals as django_signals
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task as DjangoTask
    from django.tasks.base import TaskError
    from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
    from django.utils.json import normalize_json

    FRAMEWORK = "django.tasks"
else:  # Django 5.2: the django-tasks backport, if it is installed
    try:
        from django_tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
        from django_tasks import signals as django_signals
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task as DjangoTask
        from django_tasks.base import TaskError
        from django_tasks.exceptions import InvalidTaskBackendError as InvalidTaskBackend
        from django_tasks.exceptions import InvalidTaskError as InvalidTask
        from django_tasks.exceptions import TaskResultDoesNotExist
        from django_tasks.utils import normalize_json
    except ModuleNotFoundError as exc:
        if exc.name != "django_tasks":
            raise
        raise ImportError(
            f"Django {django.get_version()} has no django.tasks, and the django-tasks backport "
            'is not installed. Install it with: pip install "django-qtasks[tasks]" '
            "(or upgrade to Django 6.0+).",
            name="django_tasks",
        ) from exc

    FRAMEWORK = "django_tasks"

if TYPE_CHECKING:
    from django_qtasks.api.queue_tasks import QueueTasks

    AnyDjangoTask: TypeAlias = DjangoTask[Any, Any]
    AnyTaskResult: TypeAlias = TaskResult[Any, Any]
else:
    AnyDjangoTask = DjangoTask
    AnyTaskResult = TaskResult

logger = logging.getLogger("django_qtasks.django_tasks")

PREFIX = "django.tasks:"
"""Rows enqueued through Django's API are named ``PREFIX + task.module_path``."""

BACKEND_TAG = "backend:"
"""Each such row is tagged ``backend:<alias>``: the ``TASKS`` alias it was enqueued on."""

STATUSES: dict[str, TaskResultStatus] = {
    TaskStatus.NEW: TaskResultStatus.READY,
    TaskStatus.RETRY: TaskResultStatus.READY,
    TaskStatus.BLOCKED: TaskResultStatus.READY,
    TaskStatus.PROCESS: TaskResultStatus.RUNNING,
    TaskStatus.SUCCESS: TaskResultStatus.SUCCESSFUL,
    TaskStatus.ERROR: TaskResultStatus.FAILED,
    # Django has no "cancelled": a cancelled task did not run to success.
    TaskStatus.CANCEL: TaskResultStatus.FAILED,
}

__all__ = [
    "BACKEND_TAG",
    "FRAMEWORK",
    "PREFIX",
    "AnyDjangoTask",
    "AnyTaskResult",
    "BaseTaskBackend",
    "DjangoTask",
    "DjangoTaskAdapter",
    "InvalidTask",
    "InvalidTaskBackend",
    "TaskContext",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "django_signals",
    "enqueued_result",
    "normalize_json",
    "resolve",
    "task_backends",
    "to_task_result",
]


# -- naming and finding ----------------------------------------------------------------
def task_name(task: AnyDjangoTask) -> str:
    return PREFIX + task.module_path


def in_installed_app(module: str) -> bool:
    """True if ``module`` is an installed app's package or inside one: the only code the
    worker will import because a row names it."""
    return any(
        module == config.name or module.startswith(config.name + ".")
        for config in apps.get_app_configs()
    )


def find_task(path: str) -> AnyDjangoTask | None:
    """The Django ``Task`` object at ``module.attribute``, or None.

    Only modules of installed apps are imported, and only a real ``Task`` whose own
    module path is ``path`` is returned: a row naming ``os.system``, a plain function or
    an alias of another task finds nothing.
    """
    module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute or not in_installed_app(module_name):
        return None
    try:
        module = import_module(module_name)
    except Exception:
        logger.warning("Cannot import %s for a django.tasks row", module_name, exc_info=True)
        return None
    found = getattr(module, attribute, None)
    if not isinstance(found, DjangoTask) or found.module_path != path:
        return None
    return found


def resolve(name: str) -> BaseTask[Any] | None:
    """The registry's resolver for :data:`PREFIX` names (see ``TaskRegistry.add_resolver``)."""
    if not name.startswith(PREFIX):
        return None
    found = find_task(name[len(PREFIX) :])
    if found is None:
        return None
    from django_qtasks import app

    return DjangoTaskAdapter(app, found)


def alias_of(task: Task) -> str | None:
    """The ``TASKS`` alias a row was enqueued on (from its tag)."""
    for tag in task.tags:
        if tag.startswith(BACKEND_TAG):
            return tag[len(BACKEND_TAG) :]
    return None


# -- running -------------------------------------------------------------------------
class DjangoTaskAdapter(BaseTask["QueueTasks"]):
    """What the worker runs for a Django task: its function, with our options.

    Retries, backoff and time limit come from the ``QTask`` fields (``@task(max_retries=
    ...)``) when the task was declared through our backend's ``task_class``. A
    ``takes_context`` task is run with ``echo=True`` so that it can be handed Django's
    ``TaskContext`` built from the running row (attempt number included).
    """

    def __init__(self, app: QueueTasks, django_task: AnyDjangoTask) -> None:
        options = TaskOptions(
            name=task_name(django_task),
            retry=getattr(django_task, "max_retries", None),
            retry_on_exc=getattr(django_task, "retry_on_exc", ()),
            retry_backoff=getattr(django_task, "retry_backoff", None),
            max_time=getattr(django_task, "max_time", None),
            echo=django_task.takes_context,
            description=django_task.func.__doc__ or "",
        )
        super().__init__(app, _runner(django_task), options)
        self.django_task = django_task


def _json_result(value: Any) -> Any:
    """Django's normalisation of a return value (bytes to str, tuples to lists); a value
    it cannot take is a bug in the task, never retried."""
    try:
        return normalize_json(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise not_json_result(value, exc) from None


def _runner(django_task: AnyDjangoTask) -> Callable[..., Any]:
    """The function the executor calls: async if the task's function is (the executor
    then runs it on an event loop, with cancellation and time limits)."""
    func = django_task.func
    run: Callable[..., Any]
    if django_task.takes_context:

        def context(self: TaskSelf) -> TaskContext[Any, Any]:
            task = self.ctx.task
            return TaskContext(task_result=to_task_result(task, django_task, alias_of(task)))

        if is_async_callable(func):

            async def run(self: TaskSelf, /, *args: Any, **kwargs: Any) -> Any:
                return _json_result(await func(context(self), *args, **kwargs))

        else:

            def run(self: TaskSelf, /, *args: Any, **kwargs: Any) -> Any:
                return _json_result(func(context(self), *args, **kwargs))

    elif is_async_callable(func):

        async def run(*args: Any, **kwargs: Any) -> Any:
            return _json_result(await func(*args, **kwargs))

    else:

        def run(*args: Any, **kwargs: Any) -> Any:
            return _json_result(func(*args, **kwargs))

    run.__name__ = func.__name__
    run.__qualname__ = func.__qualname__
    run.__module__ = func.__module__
    run.__doc__ = func.__doc__
    return run


# -- mapping rows to TaskResult -------------------------------------------------------
def bind(django_task: AnyDjangoTask, **changes: Any) -> AnyDjangoTask:
    """A copy of ``django_task`` with some fields changed, without validating it again.

    Reading a stored result must not fail because the settings changed since it was
    enqueued (``Task.using()`` would re-run the backend's validation)."""
    copy = object.__new__(type(django_task))
    for field in dataclasses.fields(django_task):
        value = changes.get(field.name, getattr(django_task, field.name))
        object.__setattr__(copy, field.name, value)
    return copy


def to_task_result(
    task: Task, django_task: AnyDjangoTask, alias: str | None, *, as_given: bool = False
) -> AnyTaskResult:
    """Django's view of one of our rows.

    ``worker_ids`` has one entry per attempt (so ``TaskResult.attempts`` and
    ``TaskContext.attempt`` are our attempt number); ``errors`` has one ``TaskError`` per
    entry of our error history; ``started_at`` and ``last_attempted_at`` are both the
    start of the latest attempt (the row keeps no other). With ``as_given``,
    ``result.task`` is ``django_task`` itself (what ``enqueue()`` was called with);
    otherwise the task's definition with the row's priority, queue and deferral.
    """
    alias = alias or django_task.backend
    result_task = django_task
    if not as_given:
        waiting = task.status in (TaskStatus.NEW, TaskStatus.RETRY)
        run_after = task.run_after if waiting and task.run_after > task.created_at else None
        result_task = bind(
            django_task,
            priority=task.priority,
            queue_name=task.queue,
            run_after=run_after,
            backend=alias,
        )
    entries = error_entries(task.errors)
    if entries:
        by_attempt = {entry.get("attempt"): entry.get("worker_id") for entry in entries}
        worker_ids = [
            by_attempt.get(attempt) or task.worker_id for attempt in range(1, task.attempt + 1)
        ]
    else:  # every new task: no history to look through
        worker_ids = [task.worker_id] * task.attempt
    result: AnyTaskResult = TaskResult(
        task=result_task,
        id=str(task.uuid),
        status=STATUSES[task.status],  # a str looks up its TaskStatus key
        enqueued_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        last_attempted_at=task.started_at,
        args=task.args,
        kwargs=task.kwargs,
        backend=alias,
        errors=[
            TaskError(
                exception_class_path=str(entry.get("type", "")),
                traceback=str(entry.get("traceback") or entry.get("message") or ""),
            )
            for entry in entries
        ],
        worker_ids=worker_ids,
    )
    if task.status == TaskStatus.SUCCESS:
        object.__setattr__(result, "_return_value", task.returning)
    return result


# The fields of Django's TaskResult that enqueued_result() sets, in this order; when
# the installed framework's TaskResult has other fields, it uses the constructor.
_NEW_RESULT_FIELDS = (
    "task", "id", "status", "enqueued_at", "started_at", "finished_at", "last_attempted_at",
    "args", "kwargs", "backend", "errors", "worker_ids", "_return_value",
)  # fmt: skip
_NEW_RESULT_DIRECT = {f.name for f in dataclasses.fields(TaskResult)} == set(_NEW_RESULT_FIELDS)
_NEW_RESULT_SETTERS: tuple[Callable[[Any, Any], None], ...] = (
    tuple(vars(TaskResult)[name].__set__ for name in _NEW_RESULT_FIELDS)
    if _NEW_RESULT_DIRECT and all(name in vars(TaskResult) for name in _NEW_RESULT_FIELDS)
    else ()
)


def enqueued_result(task: Task, django_task: AnyDjangoTask, alias: str) -> AnyTaskResult:
    """The ``TaskResult`` that ``enqueue()`` returns for the row it has just stored.

    A new row's result is known without looking at it beyond its id and time, and its
    arguments went through Django's ``normalize_json`` already (the backend's
    ``build_spec``): Django's constructor would normalise both again, and that was
    a tenth of what the backend adds to the INSERT. A row that is not plainly new
    (run at once by ``MODE = "immediate"``) goes through :func:`to_task_result`."""
    if not _NEW_RESULT_SETTERS or task.status != TaskStatus.NEW or task.attempt:
        return to_task_result(task, django_task, alias, as_given=True)
    result: AnyTaskResult = object.__new__(TaskResult)
    values: tuple[Any, ...] = (
        django_task, str(task.uuid), TaskResultStatus.READY, task.created_at, None, None,
        None, task.args, task.kwargs, alias, [], [], None,
    )  # fmt: skip
    for set_field, value in zip(_NEW_RESULT_SETTERS, values, strict=True):
        set_field(result, value)  # a slot's own setter: past the frozen __setattr__
    return result


def after_attempt(task: Task, outcome: Outcome, now: dt.datetime) -> Task:
    """The row as the worker has just stored it, computed without reading it back."""
    changes: dict[str, Any] = {"status": str(outcome.status), "updated_at": now}
    if outcome.status == TaskStatus.SUCCESS:
        changes["returning"] = outcome.returning
    if outcome.error is not None:
        entry = {"attempt": task.attempt, **outcome.error, "traceback": outcome.traceback}
        changes["errors"] = [*task.errors, entry]
    if outcome.status == TaskStatus.RETRY:
        changes["run_after"] = outcome.run_after or now
    else:
        changes["finished_at"] = now
    return dataclasses.replace(task, **changes)


def loaded_task_names() -> list[str]:
    """The row names (``django.tasks:<module path>``) of the Django tasks defined in the
    installed apps' modules imported so far: at a worker's start, every ``tasks.py``
    (autodiscovered) and what they import. The worker's start-up line lists them; it
    also runs a Django task of an installed app's module not imported yet."""
    found = []
    for module in list(sys.modules.values()):
        module_name = getattr(module, "__name__", None)
        if not isinstance(module_name, str) or not in_installed_app(module_name):
            continue
        for attribute, value in list(vars(module).items()):
            if isinstance(value, DjangoTask) and value.module_path == f"{module_name}.{attribute}":
                found.append(task_name(value))
    return sorted(found)
