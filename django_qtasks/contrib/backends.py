"""A backend for Django's Tasks framework: ``@task`` code runs on ``qtasks_worker``.

``TASKS = {"default": {"BACKEND": "django_qtasks.backends.QTasksBackend"}}`` makes
``task.enqueue()`` store a row in our table (on the caller's connection, so it
commits or rolls back with the caller's transaction), which any ``qtasks_worker`` runs
with our retries, time limits, rescue and admin. See ``docs/django-tasks.md``.

On Django 5.2 it works with the ``django-tasks`` backport (``django-qtasks[tasks]``);
without it, importing this module raises an ``ImportError`` saying so.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid as uuid_lib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from asgiref.sync import sync_to_async
from django.apps import apps
from django.conf import settings as django_settings
from django.core import checks
from django.dispatch import Signal
from django.utils import timezone

from django_qtasks import signals
from django_qtasks.api.options import EnqueueOptions, check_json, retry_problem, validate_queue
from django_qtasks.contrib.django_tasks import (
    BACKEND_TAG,
    PREFIX,
    AnyDjangoTask,
    AnyTaskResult,
    BaseTaskBackend,
    DjangoTask,
    DjangoTaskAdapter,
    InvalidTask,
    InvalidTaskBackend,
    TaskResultDoesNotExist,
    after_attempt,
    alias_of,
    django_signals,
    enqueued_result,
    in_installed_app,
    normalize_json,
    resolve,
    task_backends,
    task_name,
    to_task_result,
)
from django_qtasks.exceptions import ConfigurationError, InvalidTaskCall, TaskNotRegistered
from django_qtasks.settings import QUEUE_NAME_RE, get_settings
from django_qtasks.values import Outcome, Task, TaskSpec

if TYPE_CHECKING:
    from django_qtasks.api.queue_tasks import QueueTasks

logger = logging.getLogger("django_qtasks.backends")

#: Task objects whose checks a backend remembers (see QTasksBackend._check).
MAX_CHECKED = 256


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QTask(AnyDjangoTask):
    """The backend's ``task_class``: Django's ``Task`` with django-qtasks' options.

    ``@task(max_retries=3, retry_backoff=2, retry_on_exc=[ConnectionError],
    max_time=30)`` (Django 6.0+, and the backport) declares them; ``None`` means the
    ``QTASKS`` default. ``max_retries`` is ``@app.task``'s ``retry``: how many more
    attempts after the first.
    """

    max_retries: int | None = None
    retry_on_exc: tuple[type[BaseException], ...] = ()
    retry_backoff: float | None = None
    max_time: float | None = None

    def __post_init__(self) -> None:
        exc_types: Any = self.retry_on_exc
        if isinstance(exc_types, type):
            exc_types = (exc_types,)
        object.__setattr__(self, "retry_on_exc", tuple(exc_types or ()))
        # Not super(): slots=True dataclasses break zero-argument super() before 3.14.
        DjangoTask.__post_init__(self)


def _check_options(task: QTask) -> None:
    retries = task.max_retries
    if retries is not None and (problem := retry_problem("max_retries", retries)):
        raise InvalidTask(f"{problem}.")
    if not all(isinstance(e, type) and issubclass(e, BaseException) for e in task.retry_on_exc):
        raise InvalidTask("retry_on_exc must list exception classes.")
    for key in ("retry_backoff", "max_time"):
        value = getattr(task, key)
        if value is None:
            continue
        positive = key == "max_time"
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value < 0
            or (positive and value == 0)
        ):
            expected = "a number > 0" if positive else "a number >= 0"
            raise InvalidTask(f"{key} must be {expected}, got {value!r}.")


class QTasksBackend(BaseTaskBackend):
    """Django's ``BaseTaskBackend`` over django-qtasks' queue.

    Priority (-100..100, higher first), ``queue_name`` and ``run_after`` become the
    row's priority, queue and ``run_after``; one ``add_task`` code path stores it. The
    backend takes no ``OPTIONS``: the queue is configured in ``QTASKS``.
    """

    task_class = QTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        # id(task) -> (task, settings, USE_TZ, row name, its enqueue options): what
        # checking a Task object found, for as long as it and the settings stay the same
        # objects (see _checked).
        self._checked: dict[int, tuple[AnyDjangoTask, object, bool, str, EnqueueOptions]] = {}

    @property
    def app(self) -> QueueTasks:
        from django_qtasks import app

        return app

    # -- validation ------------------------------------------------------------------
    def validate_task(self, task: AnyDjangoTask) -> None:
        """Django's rules, then ours: a queue name ``QTASKS`` allows, a module the
        worker may import, and valid ``QTask`` options. Raises ``InvalidTask``."""
        super().validate_task(task)
        try:
            validate_queue(task.queue_name, get_settings().queues)
        except InvalidTaskCall as exc:
            raise InvalidTask(str(exc)) from None
        # Tasks declared while the app registry loads are checked again at enqueue.
        if apps.apps_ready and not in_installed_app(task.func.__module__):
            raise InvalidTask(
                f"{task.module_path} is not in an installed app: qtasks_worker only runs "
                "Django tasks defined in a module of an app in INSTALLED_APPS."
            )
        if isinstance(task, QTask):
            _check_options(task)

    # -- enqueue ---------------------------------------------------------------------
    def _check(self, task: AnyDjangoTask) -> tuple[str, EnqueueOptions]:
        """The row name and the enqueue options of a valid ``task``; raises
        ``InvalidTask`` otherwise.

        A ``Task`` is a frozen dataclass, and what the checks read besides it (our
        settings, ``USE_TZ``, the installed apps, the registry, which only grows) does
        not change while the settings object stays the same: a module-level task is
        checked on its first enqueue, not on each (they cost as much as the insert's
        Python side), and its priority, queue and ``run_after`` become checked
        options once. ``task.using(...)`` makes a new object, checked anew; the memo is
        bounded, so such copies cannot make it grow without end."""
        settings = get_settings()
        use_tz = bool(django_settings.USE_TZ)
        seen = self._checked.get(id(task))
        if seen is not None and seen[0] is task and seen[1] is settings and seen[2] is use_tz:
            return seen[3], seen[4]
        self.validate_task(task)
        name = task_name(task)
        try:
            self.app.registry.get(name)  # the worker finds it the same way
        except TaskNotRegistered:
            raise InvalidTask(
                f"{task.module_path} does not name this task: a Django task must be a "
                "module-level Task with its function's name, so that the worker finds it."
            ) from None
        try:
            options = EnqueueOptions(
                priority=int(task.priority), queue=task.queue_name, run_after=task.run_after
            )
        except InvalidTaskCall as exc:
            raise InvalidTask(str(exc)) from None
        if len(self._checked) >= MAX_CHECKED:
            self._checked.clear()
        self._checked[id(task)] = (task, settings, use_tz, name, options)
        return name, options

    def build_spec(
        self, task: AnyDjangoTask, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> TaskSpec:
        """Validate and build the row to store, without I/O (shared by sync and async)."""
        name, options = self._check(task)
        json_args, json_kwargs = _json_arguments(args, kwargs)
        try:
            spec = self.app.build_spec(name, json_args, json_kwargs, options)
        except InvalidTaskCall as exc:
            raise InvalidTask(str(exc)) from None
        spec.tags.append(BACKEND_TAG + self.alias)  # a list built for this spec alone
        return spec

    def enqueue(
        self, task: AnyDjangoTask, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> AnyTaskResult:
        """Store the task in the caller's transaction and return its ``TaskResult``."""
        stored = self.app.sync_add_spec(self.build_spec(task, args, kwargs))
        result = enqueued_result(stored, task, self.alias)
        django_signals.task_enqueued.send(type(self), task_result=result)
        return result

    async def aenqueue(
        self, task: AnyDjangoTask, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> AnyTaskResult:
        """Validation and building run on the event loop; only the insert goes to a
        thread (our storage, like Django's ORM, is synchronous underneath), and
        ``task_enqueued`` is sent with ``asend``."""
        spec = self.build_spec(task, args, kwargs)
        stored = await sync_to_async(self.app.sync_add_spec, thread_sensitive=True)(spec)
        result = enqueued_result(stored, task, self.alias)
        await django_signals.task_enqueued.asend(type(self), task_result=result)
        return result

    # -- results ---------------------------------------------------------------------
    def get_result(self, result_id: str) -> AnyTaskResult:
        return self._result(result_id, self.app.sync_get(_parse_id(result_id)))

    async def aget_result(self, result_id: str) -> AnyTaskResult:
        uuid = _parse_id(result_id)
        row = await sync_to_async(self.app.sync_get, thread_sensitive=True)(uuid)
        return self._result(result_id, row)

    def _result(self, result_id: str, row: Task | None) -> AnyTaskResult:
        if row is None or not row.task_name.startswith(PREFIX):
            raise TaskResultDoesNotExist(result_id)
        try:
            definition = self.app.registry.get(row.task_name)
        except TaskNotRegistered:
            definition = None
        if not isinstance(definition, DjangoTaskAdapter):
            raise TaskResultDoesNotExist(
                f"{result_id}: its task {row.task_name!r} can no longer be found."
            )
        return to_task_result(row, definition.django_task, self.alias)

    # -- system checks ---------------------------------------------------------------
    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        messages: list[checks.CheckMessage] = list(super().check(**kwargs))
        where = f"TASKS[{self.alias!r}]"
        if not apps.is_installed("django_qtasks"):
            messages.append(
                checks.Error(
                    f"{where} uses QTasksBackend, but django_qtasks is not installed.",
                    hint="Add 'django_qtasks' to INSTALLED_APPS and run migrate.",
                    id="django_qtasks.E101",
                )
            )
        if self.options:
            messages.append(
                checks.Error(
                    f"{where} has OPTIONS ({', '.join(sorted(map(str, self.options)))}); "
                    "QTasksBackend takes none.",
                    hint="Configure the queue (database, retries, ...) in QTASKS.",
                    id="django_qtasks.E102",
                )
            )
        try:
            allowed = get_settings().queues
        except ConfigurationError:
            return messages  # django_qtasks.E001 reports it
        for queue in sorted(self.queues):
            if not isinstance(queue, str) or not QUEUE_NAME_RE.match(queue):
                messages.append(
                    checks.Error(
                        f"{where}['QUEUES'] has {queue!r}, which is not a valid queue name.",
                        hint="Use letters, digits and _ . : - (at most 64 characters).",
                        id="django_qtasks.E103",
                    )
                )
            elif allowed is not None and queue not in allowed:
                messages.append(
                    checks.Error(
                        f"{where}['QUEUES'] has {queue!r}, which is not in QTASKS['QUEUES'].",
                        hint="Add it to QTASKS['QUEUES'], or remove it from QUEUES.",
                        id="django_qtasks.E104",
                    )
                )
        return messages


def _parse_id(result_id: Any) -> uuid_lib.UUID:
    try:
        return uuid_lib.UUID(str(result_id))
    except ValueError:
        raise TaskResultDoesNotExist(result_id) from None


def _json_arguments(
    args: Sequence[Any], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Django's normalisation of arguments (tuples to lists, bytes to str); a value it
    refuses is reported as our ``add_task`` does, naming the argument. No arguments
    (the common call) need no normalising."""
    if not args and not kwargs:
        return [], {}
    try:
        return cast(list[Any], normalize_json(list(args))), cast(
            dict[str, Any], normalize_json(dict(kwargs))
        )
    except (TypeError, ValueError):
        check_json(list(args), dict(kwargs), None)  # raises, naming the argument
        raise


# -- Django's signals, sent from the worker ----------------------------------------------
def _sender(alias: str) -> type[BaseTaskBackend]:
    try:
        backend = task_backends[alias]
    except InvalidTaskBackend:
        return QTasksBackend
    return type(backend) if isinstance(backend, QTasksBackend) else QTasksBackend


def _resend(signal: Signal, task: Task, outcome: Outcome | None = None) -> None:
    """Send one of Django's signals for a row of a Django task.

    It runs inside the worker, so a failing receiver is logged, never raised: it must
    not leave the task unfinished."""
    if not task.task_name.startswith(PREFIX):
        return
    try:
        from django_qtasks import app

        definition = app.registry.get(task.task_name)
        if not isinstance(definition, DjangoTaskAdapter):
            return
        if outcome is not None:
            task = after_attempt(task, outcome, timezone.now())
        alias = alias_of(task) or definition.django_task.backend
        result = to_task_result(task, definition.django_task, alias)
        sender = _sender(alias)
    except Exception:
        logger.exception("Could not build the TaskResult of task %s", task.uuid)
        return
    signals.send_from_worker(signal, sender, task_result=result)


def _on_task_started(sender: Any, task: Task, **kwargs: Any) -> None:
    _resend(django_signals.task_started, task)


def _on_task_finished(sender: Any, task: Task, outcome: Outcome, **kwargs: Any) -> None:
    _resend(django_signals.task_finished, task, outcome)


def install() -> None:
    """Let the worker run Django tasks and send Django's signals; called by our
    AppConfig, so a worker needs no import from the project."""
    from django_qtasks import app

    app.registry.add_resolver(PREFIX, resolve)
    signals.task_started.connect(_on_task_started, dispatch_uid="django_qtasks.django.started")
    signals.task_finished.connect(_on_task_finished, dispatch_uid="django_qtasks.django.finished")


__all__ = ["QTask", "QTasksBackend", "install"]
