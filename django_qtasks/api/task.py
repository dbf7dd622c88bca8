"""The decorated task objects and the pending call.

``SyncTask``/``AsyncTask`` are what ``@app.task`` returns: they hold the function
and its options and build what ``add_task()`` stores. Calling one does not run it;
it gives a :class:`TaskCls` (a pending call) whose ``add_task()`` enqueues it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

# Their old import path: the checks live with EnqueueOptions now.
from django_qtasks.api.options import MAX_DEPTH as MAX_DEPTH
from django_qtasks.api.options import EnqueueOptions as EnqueueOptions
from django_qtasks.api.options import RunAfter as RunAfter
from django_qtasks.api.options import check_json as check_json
from django_qtasks.api.options import check_value as check_value
from django_qtasks.api.options import enqueue_options
from django_qtasks.api.options import resolve_run_after as resolve_run_after
from django_qtasks.api.options import validate_priority as validate_priority
from django_qtasks.api.options import validate_queue as validate_queue

# The values every layer passes (docs/architecture.md#the-map): their old import path.
from django_qtasks.values import Outcome as Outcome
from django_qtasks.values import Task as Task
from django_qtasks.values import TaskSpec as TaskSpec

if TYPE_CHECKING:
    from django_qtasks.api.queue_tasks import AsyncQueueTasks, BaseQueueTasks, QueueTasks  # noqa: F401
    from django_qtasks.worker.executor import BaseTaskExecutor


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
        options: EnqueueOptions | None = None,
        **fields: Any,
    ) -> TaskSpec:
        """The row to store for a call: ``options`` (or the ``EnqueueOptions`` fields)."""
        return self.app.build_spec(self.name, args, kwargs, options, **fields)


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
        options = enqueue_options(priority, queue, run_after, unique_key, concurrency_key, timeout)
        return self.app.sync_add_spec(self.build_spec(args, kwargs, options), timeout=timeout)

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
            [(self.name, args, {}) for args in arguments],
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
        options = enqueue_options(priority, queue, run_after, unique_key, concurrency_key, timeout)
        return await self.app.add_spec(self.build_spec(args, kwargs, options), timeout=timeout)


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
        options = enqueue_options(priority, queue, run_after, unique_key, concurrency_key, timeout)
        spec = self.task.build_spec(self.args, self.kwargs, options)
        return self.task.app.add_spec(spec, timeout=timeout)
