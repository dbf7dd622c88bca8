"""The decorated task objects, the pending call, and the ``Task`` snapshot.

``SyncTask``/``AsyncTask`` are what ``@app.task`` returns: they hold the function
and its options and build what ``add_task()`` stores. Calling one does not run it;
it gives a :class:`TaskCls` (a pending call) whose ``add_task()`` enqueues it.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from django.utils import timezone

from django_qtasks.exceptions import InvalidTaskCall
from django_qtasks.models import FINISHED_STATUSES, TaskRecord
from django_qtasks.settings import PRIORITY_MAX, PRIORITY_MIN, QUEUE_NAME_RE

if TYPE_CHECKING:
    from django_qtasks.api.queue_tasks import AsyncQueueTasks, BaseQueueTasks, QueueTasks  # noqa: F401
    from django_qtasks.worker.executor import BaseTaskExecutor

RunAfter = dt.datetime | dt.timedelta | int | float | None


@dataclass(frozen=True)
class Task:
    """A read-only snapshot of one task row, as ``add_task()``/``get()`` return it."""

    uuid: UUID
    task_name: str
    status: str
    priority: int
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    returning: Any
    traceback: str
    errors: list[dict[str, Any]]
    attempt: int
    max_retries: int
    run_after: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    worker_id: str
    unique_key: str | None
    cancel_requested: bool
    progress: dict[str, Any] | None
    tags: list[str]
    # Chains and groups: see TaskRecord and docs/workflows.md. A finished task with a
    # ``flow_id`` may release (or cancel) the next stage of its flow.
    flow_id: UUID | None = None
    flow_stage: int | None = None
    flow_index: int | None = None
    # Concurrency limits (docs/concurrency-limits.md): the task's group within its task
    # name ("" for the whole task) and how many of the group may run at once.
    concurrency_key: str | None = None
    max_concurrency: int | None = None

    @classmethod
    def from_record(cls, record: TaskRecord) -> Task:
        values = {name: getattr(record, name) for name in _SNAPSHOT_FIELDS}
        values["status"] = str(values["status"])  # a plain string, however the row was made
        return cls.from_fields(values)

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> Task:
        """A snapshot from a mapping that names every field once, as the claim and the
        bulk enqueue build it per row. It skips the generated ``__init__``: a frozen
        dataclass sets each of its fields through ``object.__setattr__``, which cost
        more than the rest of turning a claimed row into a snapshot."""
        if values.keys() != _FIELD_SET:
            raise TypeError(f"Task fields missing or unknown: {values.keys() ^ _FIELD_SET}")
        task = object.__new__(cls)
        task.__dict__.update(values)
        return task

    @property
    def is_finished(self) -> bool:
        """True once the status is final: ``success``, ``error`` or ``cancel``."""
        return self.status in FINISHED_STATUSES

    def cancel(self, reason: str = "") -> Task | None:
        """Cancel this task through the project's app (see ``QueueTasks.cancel``)."""
        from django_qtasks import app

        return app.cancel(self.uuid, reason)

    def refresh(self) -> Task | None:
        """A fresh snapshot of this task (``None`` if the row is gone)."""
        from django_qtasks import app

        return app.get(self.uuid)

    @property
    def duration(self) -> dt.timedelta | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


_SNAPSHOT_FIELDS = tuple(Task.__dataclass_fields__)
_FIELD_SET = frozenset(_SNAPSHOT_FIELDS)


@dataclass(frozen=True)
class TaskOptions:
    """What ``@app.task(...)`` was given; ``None`` means "the settings' default"."""

    name: str
    priority: int | None = None
    queue: str | None = None
    retry: int | None = None
    retry_on_exc: tuple[type[BaseException], ...] = ()
    retry_backoff: float | None = None
    max_time: float | None = None
    echo: bool = False
    tags: tuple[str, ...] = ()
    description: str = ""
    middlewares_before: tuple[Any, ...] = ()
    middlewares_after: tuple[Any, ...] = ()
    executor: type[BaseTaskExecutor] | None = None
    # A periodic task (see docs/periodic-tasks.md): enqueued at every tick of ``cron``.
    cron: str | None = None
    cron_tz: str | None = None  # None: Django's TIME_ZONE
    cron_catch_up: bool = True
    # At most this many tasks of this name run at once, on all workers; with
    # ``concurrency_key`` (a string, or a function of the task's arguments that returns
    # one), at most this many per key. See docs/concurrency-limits.md.
    max_concurrency: int | None = None
    concurrency_key: str | Callable[..., str] | None = None


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to store one new task; built by pure functions, no I/O."""

    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    priority: int
    run_after: dt.datetime | None
    max_retries: int
    unique_key: str | None = None
    tags: list[str] = field(default_factory=list)
    # ``args`` and ``kwargs`` as the JSON text to store, when the builder has encoded
    # them already (it must, to validate them): Storage writes it as it is.
    encoded: tuple[str, str] | None = None
    # Its place in a chain or group (see django_qtasks.workflows); a ``blocked`` task
    # waits for the stage before it instead of being ready at once.
    flow_id: UUID | None = None
    flow_stage: int | None = None
    flow_index: int | None = None
    blocked: bool = False
    # The concurrency group ("" for the whole task) and its limit; both None: no limit.
    concurrency_key: str | None = None
    max_concurrency: int | None = None


def validate_priority(priority: Any) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidTaskCall(f"priority must be an integer, got {priority!r}.")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidTaskCall(
            f"priority must be from {PRIORITY_MIN} to {PRIORITY_MAX} (higher runs first), "
            f"got {priority}."
        )
    return priority


def validate_queue(queue: Any, allowed: Sequence[str] | None) -> str:
    if not isinstance(queue, str) or not QUEUE_NAME_RE.match(queue):
        raise InvalidTaskCall(
            f"queue must be a name of letters, digits and _ . : - (at most 64), got {queue!r}."
        )
    if allowed is not None and queue not in allowed:
        raise InvalidTaskCall(f"queue {queue!r} is not in QTASKS['QUEUES'] ({', '.join(allowed)}).")
    return queue


def resolve_run_after(run_after: RunAfter) -> dt.datetime | None:
    """Turn ``datetime | timedelta | seconds`` into an aware datetime."""
    if run_after is None:
        return None
    if isinstance(run_after, dt.datetime):
        if timezone.is_naive(run_after):
            raise InvalidTaskCall(
                "run_after must be an aware datetime (use django.utils.timezone)."
            )
        return run_after
    if isinstance(run_after, dt.timedelta):
        return timezone.now() + run_after
    if isinstance(run_after, (int, float)) and not isinstance(run_after, bool):
        return timezone.now() + dt.timedelta(seconds=run_after)
    raise InvalidTaskCall(
        f"run_after must be a datetime, a timedelta or seconds, got {type(run_after).__name__}."
    )


# One encoder for every call: json.dumps(..., allow_nan=False) builds a new one each time.
_encode_json = json.JSONEncoder(allow_nan=False).encode


def check_json(
    args: Sequence[Any], kwargs: dict[str, Any], max_bytes: int | None
) -> tuple[str, str]:
    """Encode the arguments as the JSON that will be stored (once: the enqueue path is
    hot), failing before anything is stored if an argument would not survive JSON (the
    error names it) or if they are too big to belong in a queue row."""
    try:
        # Empty ones are common (most calls have no keyword arguments): no encoder.
        encoded = (
            _encode_json(list(args)) if args else "[]",
            _encode_json(kwargs) if kwargs else "{}",
        )
    except (TypeError, ValueError):
        _raise_for_bad_argument(args, kwargs)
        raise
    size = len(encoded[0]) + len(encoded[1])
    if max_bytes is not None and size > max_bytes:
        raise InvalidTaskCall(
            f"The task's arguments take {size:,} bytes as JSON, more than "
            f"QTASKS['MAX_ARGS_SIZE'] ({max_bytes:,}). Store large data elsewhere (a file, "
            "a model) and pass its id."
        )
    return encoded


def _raise_for_bad_argument(args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Find which argument cannot be encoded, and say so."""
    labelled = [(f"positional argument {i}", value) for i, value in enumerate(args)]
    labelled += [(f"argument {name!r}", value) for name, value in kwargs.items()]
    for label, value in labelled:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{label} ({type(value).__name__}) is not JSON-serializable: {exc}. "
                "Task arguments are stored as JSON: pass ids, strings, numbers, lists and "
                "dicts."
            ) from None


def is_async_callable(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)


F = TypeVar("F", bound=Callable[..., Any])
A = TypeVar("A", bound="BaseQueueTasks")


class BaseTask(Generic[A]):
    """A registered task: the function, its options, and the app that owns it."""

    def __init__(self, app: A, func: Callable[..., Any], options: TaskOptions) -> None:
        self.app = app
        self.func = func
        self.options = options
        self.__doc__ = func.__doc__
        self.__name__ = getattr(func, "__name__", options.name)
        self.__module__ = getattr(func, "__module__", __name__)
        self.__wrapped__ = func

    @property
    def name(self) -> str:
        return self.options.name

    @functools.cached_property
    def is_async(self) -> bool:
        # Asked for every task a worker runs; inspect's answer is not cheap.
        return is_async_callable(self.func)

    def __call__(self, *args: Any, **kwargs: Any) -> TaskCls:
        """Build a pending call; nothing runs and nothing is stored until ``add_task()``."""
        return TaskCls(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def build_spec(
        self,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        priority: int | None = None,
        queue: str | None = None,
        run_after: RunAfter = None,
        unique_key: str | None = None,
        concurrency_key: str | None = None,
    ) -> TaskSpec:
        return self.app.build_spec(
            self.name,
            args,
            kwargs,
            priority=priority,
            queue=queue,
            run_after=run_after,
            unique_key=unique_key,
            concurrency_key=concurrency_key,
        )


class SyncTask(BaseTask["QueueTasks"]):
    """What ``QueueTasks.task`` returns: ``add_task()`` is a plain call."""

    def add_task(
        self,
        *args: Any,
        priority: int | None = None,
        timeout: float | None = None,
        queue: str | None = None,
        run_after: RunAfter = None,
        unique_key: str | None = None,
        concurrency_key: str | None = None,
        **kwargs: Any,
    ) -> Task:
        """Store a new task and return its snapshot (or, with ``timeout``, the finished task)."""
        spec = self.build_spec(
            args,
            kwargs,
            priority=priority,
            queue=queue,
            run_after=run_after,
            unique_key=unique_key,
            concurrency_key=concurrency_key,
        )
        return self.app.sync_add_spec(spec, timeout=timeout)

    def add_tasks(
        self,
        arguments: Iterable[Sequence[Any]],
        *,
        priority: int | None = None,
        queue: str | None = None,
        run_after: RunAfter = None,
    ) -> list[Task]:
        """Enqueue this task once per argument tuple, in one go: ``send.add_tasks([(1,),
        (2,)])``. For keyword arguments, pass pending calls to ``app.add_tasks``."""
        return self.app.sync_add_tasks(
            [TaskCls(self, tuple(args), {}) for args in arguments],
            priority=priority,
            queue=queue,
            run_after=run_after,
        )


class AsyncTask(BaseTask["AsyncQueueTasks"]):
    """What ``AsyncQueueTasks.task`` returns: ``await task.add_task(...)``."""

    async def add_task(
        self,
        *args: Any,
        priority: int | None = None,
        timeout: float | None = None,
        queue: str | None = None,
        run_after: RunAfter = None,
        unique_key: str | None = None,
        concurrency_key: str | None = None,
        **kwargs: Any,
    ) -> Task:
        spec = self.build_spec(
            args,
            kwargs,
            priority=priority,
            queue=queue,
            run_after=run_after,
            unique_key=unique_key,
            concurrency_key=concurrency_key,
        )
        return await self.app.add_spec(spec, timeout=timeout)


class TaskCls:
    """A pending call: ``send(1, 2)`` builds one, ``.add_task()`` enqueues it.

    Every keyword given to the call goes to the function, so a function may take
    arguments named like the reserved options (``priority``, ``queue``, ...).
    """

    def __init__(self, task: BaseTask[Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.task = task
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"<TaskCls {self.task.name} args={self.args!r} kwargs={self.kwargs!r}>"

    def add_task(
        self,
        *,
        priority: int | None = None,
        timeout: float | None = None,
        queue: str | None = None,
        run_after: RunAfter = None,
        unique_key: str | None = None,
        concurrency_key: str | None = None,
    ) -> Any:
        """Enqueue the call; returns a ``Task`` (a coroutine of one for an ``AsyncTask``)."""
        spec = self.task.build_spec(
            self.args,
            self.kwargs,
            priority=priority,
            queue=queue,
            run_after=run_after,
            unique_key=unique_key,
            concurrency_key=concurrency_key,
        )
        return self.task.app.add_spec(spec, timeout=timeout)


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, as the TaskExecutor reports it to the Worker.

    ``status`` is ``success``, ``error``, ``retry`` or ``cancel``; ``error`` is the
    JSON summary of the exception (type and message) and ``run_after`` the time of
    the next attempt for ``retry``.
    """

    status: str
    returning: Any = None
    error: dict[str, Any] | None = None
    traceback: str = ""
    run_after: dt.datetime | None = None
    # ``returning`` as the JSON text to store, when the executor encoded it already.
    returning_json: str | None = None
    # The run was lost to the worker, not failed by the task (the database cut the
    # worker's connection): it goes back to the queue as a rescue, its attempt unspent,
    # at ``run_after``; ``error`` says what happened.
    lost: bool = False
