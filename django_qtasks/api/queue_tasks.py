"""QueueTasks: the object users touch. It registers tasks, enqueues and reads them.

It knows the Broker (built from ``settings.QTASKS``, owning Storage and GlobalConfig);
the worker side is built by :mod:`django_qtasks.worker.starter`. ``QueueTasks`` speaks
plain calls; ``AsyncQueueTasks`` is its async twin over the same registry and broker.

Why one module of more than 500 lines: it is the whole of the user's API, each call
beside its async twin so that the two never drift apart; what is not the API itself
lives elsewhere (enqueue options in :mod:`.options`, the worker side in ``worker/``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid as uuid_lib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from asgiref.sync import sync_to_async
from django.db import connections
from django.utils.module_loading import import_string

from django_qtasks import signals
from django_qtasks.api.concurrency import check_options as check_concurrency_options
from django_qtasks.api.concurrency import resolve_group
from django_qtasks.api.options import (
    NO_OPTIONS,
    EnqueueOptions,
    RunAfter,
    check_call_shape,
    check_json,
    enqueue_options,
    resolve_run_after,
    retry_problem,
    validate_key,
    validate_priority,
    validate_queue,
    validate_timeout,
)
from django_qtasks.api.task import AsyncTask, BaseTask, SyncTask, TaskCls, TaskOptions
from django_qtasks.broker.broker import BaseBroker, build_broker
from django_qtasks.cron import CronError, validate_cron, validate_tz
from django_qtasks.exceptions import (
    InvalidTaskCall,
    ResultTimeout,
    TaskNotFound,
    TaskNotRegistered,
    TaskRegistrationError,
    WouldDeadlock,
)
from django_qtasks.settings import QTasksSettings, get_settings
from django_qtasks.values import Task, TaskSpec
from django_qtasks.worker.executor import resolve_middlewares

if TYPE_CHECKING:
    from django_qtasks.worker.starter import Starter
    from django_qtasks.worker.worker import BaseWorker


#: Spec builders an app keeps for single calls (task names x explicit priorities and
#: queues in use); past it they are made again.
MAX_BUILDERS = 512


@dataclass(frozen=True)
class _SpecBuilder:
    """Builds the TaskSpecs of one task name from its validated, shared part."""

    task_name: str
    options: TaskOptions | None
    queue: str
    priority: int
    max_retries: int
    tags: tuple[str, ...]
    max_args_size: int | None

    def build(
        self,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        run_after: dt.datetime | None,
        unique_key: str | None = None,
        concurrency_key: str | None = None,
    ) -> TaskSpec:
        args, kwargs = check_call_shape(args, kwargs)
        encoded = check_json(args, kwargs, self.max_args_size)
        group, max_concurrency = resolve_group(self.options, args, kwargs, concurrency_key)
        if group:
            validate_key("concurrency_key", group)
        return TaskSpec(
            task_name=self.task_name,
            args=args,
            kwargs=kwargs,
            queue=self.queue,
            priority=self.priority,
            run_after=run_after,
            max_retries=self.max_retries,
            unique_key=unique_key,
            tags=list(self.tags),
            encoded=encoded,
            concurrency_key=group,
            max_concurrency=max_concurrency,
        )


class TaskRegistry:
    """Task name -> registered task. Shared by an app and its async twin."""

    def __init__(self) -> None:
        self._tasks: dict[str, BaseTask[Any]] = {}
        self._resolvers: list[tuple[str, Callable[[str], BaseTask[Any] | None]]] = []
        self._lock = threading.Lock()
        #: Bumped whenever a name gets a task: what was worked out from the registry
        #: before (the spec builders an app keeps) is stale then.
        self.generation = 0

    def add_resolver(self, prefix: str, resolver: Callable[[str], BaseTask[Any] | None]) -> None:
        """Let names starting with ``prefix`` be looked up on demand by ``resolver``.

        An integration (the django.tasks backend) uses it for tasks that are not
        ``@app.task`` functions; the resolver must refuse (return ``None``) anything
        that is not a task it knows, since the name comes from a database row.
        """
        with self._lock:
            if (prefix, resolver) not in self._resolvers:
                self._resolvers.append((prefix, resolver))

    def add(self, task: BaseTask[Any]) -> None:
        with self._lock:
            current = self._tasks.get(task.name)
            if current is not None and not _same_function(current.func, task.func):
                raise TaskRegistrationError(
                    f"A task named {task.name!r} is already registered "
                    f"({current.func.__module__}.{current.func.__qualname__}); "
                    "give one of them another name=."
                )
            self._tasks[task.name] = task
            self.generation += 1

    def get(self, name: str) -> BaseTask[Any]:
        task = self._tasks.get(name)
        if task is not None:
            return task
        for prefix, resolver in self._resolvers:
            if name.startswith(prefix):
                task = resolver(name)
                if task is not None:
                    with self._lock:
                        if self._tasks.setdefault(name, task) is task:
                            self.generation += 1
                    return task
        raise TaskNotRegistered(
            f"No task named {name!r} is registered in this process. Is its module "
            "(tasks.py of an installed app) imported, and is the name spelled right?"
        )

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def names(self) -> list[str]:
        return sorted(self._tasks)


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """A module imported twice (reloads, tests) registers the same function again."""
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


class BaseQueueTasks:
    """What the sync and async apps share: registry, broker, specs, waiting."""

    task_class: type[BaseTask[Any]]

    def __init__(
        self,
        settings: QTasksSettings | None = None,
        *,
        registry: TaskRegistry | None = None,
        shared_with: BaseQueueTasks | None = None,
    ) -> None:
        self._settings = settings
        self._shared_with = shared_with
        self.registry: TaskRegistry = registry or (
            shared_with.registry if shared_with else TaskRegistry()
        )
        self._broker: BaseBroker | None = None
        self._broker_settings: QTasksSettings | None = None
        self._lock = threading.Lock()
        # ((settings, registry generation), {(task name, priority, queue): builder}):
        # the spec builders kept for single calls (see _builder).
        self._kept_builders: tuple[tuple[object, int], dict[Any, _SpecBuilder]] | None = None

    # -- configuration ---------------------------------------------------------------
    @property
    def settings(self) -> QTasksSettings:
        if self._shared_with is not None:
            return self._shared_with.settings
        return self._settings or get_settings()

    @property
    def broker(self) -> BaseBroker:
        """The Broker (with its Storage and GlobalConfig), built once per settings."""
        if self._shared_with is not None:
            return self._shared_with.broker
        settings = self.settings
        with self._lock:
            if self._broker is None or self._broker_settings is not settings:
                self._broker = build_broker(settings)
                self._broker_settings = settings
            return self._broker

    # -- registration ----------------------------------------------------------------
    def _register(self, func: Callable[..., Any], options: dict[str, Any]) -> BaseTask[Any]:
        name = options.pop("name", None)
        if name is None:
            name = f"{func.__module__}.{func.__qualname__}"
        task_options = _build_options(name, options)
        task = self.task_class(self, func, task_options)
        self.registry.add(task)
        return task

    def get_task(self, name: str) -> BaseTask[Any]:
        return self.registry.get(name)

    # -- building a task (pure: no I/O) ----------------------------------------------
    def build_spec(
        self,
        task_name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: EnqueueOptions | None = None,
        **fields: Any,
    ) -> TaskSpec:
        """The row to store for one call, validated: ``options``, or the fields of an
        :class:`EnqueueOptions` as keywords (``priority=``, ``queue=``, ...)."""
        if options is None:
            options = EnqueueOptions(**fields) if fields else NO_OPTIONS
        elif fields:
            raise TypeError("build_spec() takes options= or its fields, not both.")
        return self._builder(task_name, options).build(
            args,
            kwargs,
            run_after=resolve_run_after(options.run_after),
            unique_key=options.unique_key,
            concurrency_key=options.concurrency_key,
        )

    def _builder(self, task_name: str, options: EnqueueOptions) -> _SpecBuilder:
        """The spec builder of a single call, kept: resolving the options and checking
        the queue and priority again on every ``add_task()`` cost a tenth of what the
        library adds to the INSERT. A builder depends only on the settings object and
        the registry, so the kept ones go when either changes; a builder is made only
        for a valid call (an invalid one raises as before, every time)."""
        if not isinstance(task_name, str):  # before it is used as a key
            validate_key("task_name", task_name)
        settings, generation = self.settings, self.registry.generation
        kept = self._kept_builders
        if (
            kept is None
            or kept[0][0] is not settings
            or kept[0][1] != generation
            or len(kept[1]) >= MAX_BUILDERS
        ):
            kept = self._kept_builders = ((settings, generation), {})
        key = (task_name, options.priority, options.queue)
        builder = kept[1].get(key)
        if builder is None:
            builder = kept[1][key] = self._spec_builder(task_name, options)
        return builder

    def _spec_builder(self, task_name: str, options: EnqueueOptions) -> _SpecBuilder:
        """What every call of one task shares (options, defaults, validated queue and
        priority), resolved once: a bulk enqueue of many calls of one task pays for it
        once, not per call."""
        settings = self.settings
        if task_name in self.registry:  # its name was checked when it was registered
            task: TaskOptions | None = self.registry.get(task_name).options
        else:
            validate_key("task_name", task_name)
            task = None
        priority, queue = options.defaults(task, settings)
        retry = task.retry if task and task.retry is not None else settings.default_retry
        return _SpecBuilder(
            task_name=task_name,
            options=task,
            queue=queue,
            priority=priority,
            max_retries=retry,
            tags=tuple(task.tags) if task else (),
            max_args_size=settings.max_args_size,
        )

    # -- the sync core; the async app wraps these --------------------------------------
    def sync_add_spec(self, spec: TaskSpec, *, timeout: float | None = None) -> Task:
        """Store a task; in immediate mode also run it (see :meth:`_run_immediately`)."""
        immediate = self.settings.mode == "immediate"
        timeout = validate_timeout(timeout)
        if timeout is not None:
            self._check_can_wait(immediate=immediate)  # before anything is written
        task, created = self.broker.storage.add(spec)
        if created:
            signals.task_enqueued.send(sender=type(self), task=task)
            if immediate:
                task = self._run_immediately([task])[0]
        if timeout is not None and not task.is_finished:
            return self.wait(task.uuid, timeout)
        return task

    def _run_immediately(self, tasks: list[Task]) -> list[Task]:
        """``QTASKS["MODE"] = "immediate"``: run the new tasks in this thread through the
        worker's own code (:mod:`django_qtasks.inline`), at once or, inside the caller's
        ``transaction.atomic()``, when it commits. Returns them as stored."""
        from django_qtasks.worker.inline import run_immediately

        return run_immediately(self, tasks)

    def _check_can_wait(self, *, immediate: bool = False) -> None:
        """Refuse to wait where the task cannot be committed; in immediate mode only the
        caller's own atomic blocks count (a test case's block never holds a task back)."""
        alias = self.settings.database
        if immediate:
            from django_qtasks.worker.inline import in_callers_atomic

            blocked = in_callers_atomic(alias)
        else:
            blocked = connections[alias].in_atomic_block
        if blocked:
            raise WouldDeadlock(
                "Waiting for a task inside transaction.atomic() cannot work: the task is not "
                "committed, so no worker can run it. Wait after the block, or drop timeout=."
            )

    def sync_add_task(
        self,
        task_name: str,
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
        spec = self.build_spec(task_name, args, kwargs, options)
        return self.sync_add_spec(spec, timeout=timeout)

    def sync_add_tasks(
        self,
        calls: Iterable[TaskCls | tuple[str, Sequence[Any], dict[str, Any]]],
        *,
        priority: int | None = None,
        queue: str | None = None,
        run_after: RunAfter = None,
    ) -> list[Task]:
        """Enqueue many tasks in one go (one transaction, few statements): pending calls
        (``send(1)``) or ``(task_name, args, kwargs)`` tuples. All are validated before
        anything is written; all are stored or none."""
        specs = []
        options = EnqueueOptions(priority=priority, queue=queue, run_after=run_after)
        run_at = resolve_run_after(options.run_after)
        builders: dict[str, _SpecBuilder] = {}
        for number, call in enumerate(calls):
            args: Sequence[Any]
            if isinstance(call, TaskCls):
                name, args, kwargs = call.task.name, call.args, call.kwargs
            elif isinstance(call, tuple) and len(call) == 3:
                name, args, kwargs = call
            else:
                raise InvalidTaskCall(
                    f"add_tasks() call {number} must be a pending call (task(...)) or a "
                    f"(task_name, args, kwargs) tuple, got {type(call).__name__}."
                )
            builder = builders.get(name) if isinstance(name, str) else None
            if builder is None:
                builder = builders[name] = self._spec_builder(name, options)
            specs.append(builder.build(args, kwargs, run_after=run_at))
        if not specs:
            return []
        tasks = self.broker.storage.add_many(specs)
        if signals.task_enqueued.has_listeners(type(self)):
            for task in tasks:
                signals.task_enqueued.send(sender=type(self), task=task)
        if self.settings.mode == "immediate":
            tasks = self._run_immediately(tasks)
        return tasks

    def sync_get(self, uuid: uuid_lib.UUID | str) -> Task | None:
        return self.broker.storage.get(uuid)

    def retry(self, uuid: uuid_lib.UUID | str) -> Task | None:
        """Send a failed or cancelled task back to the queue for one more attempt (at
        least); its error history is kept. Other tasks are left as they are."""
        return self.broker.storage.requeue(uuid)

    def pause_queue(self, queue: str) -> None:
        """Workers stop claiming from ``queue`` within a heartbeat interval; running tasks
        finish, and new tasks wait."""
        self.broker.set_queue_paused(validate_queue(queue, None), True)

    def resume_queue(self, queue: str) -> None:
        self.broker.set_queue_paused(validate_queue(queue, None), False)

    def paused_queues(self) -> set[str]:
        return self.broker.paused_queues()

    def live_workers(self) -> dict[str, Any]:
        """Worker id -> what it said in its last heartbeat (host, pid, queues, ...)."""
        return self.broker.live_workers()

    def sync_cancel(self, uuid: uuid_lib.UUID | str, reason: str = "") -> Task | None:
        """Cancel a task: a waiting one at once (it never runs); a running one is asked to
        stop and ends ``cancel`` at its next cancellation point (async tasks: at once)."""
        return self.broker.storage.cancel(uuid, reason)

    def wait(self, uuid: uuid_lib.UUID | str, timeout: float | None = None) -> Task:
        """Block until the task is finished; raise :class:`ResultTimeout` after ``timeout``."""
        waiter = _Waiter(self, uuid, timeout)
        while True:
            step = waiter.check(self.broker.storage.get(uuid))
            if isinstance(step, Task):
                return step
            time.sleep(step)

    async def await_result(self, uuid: uuid_lib.UUID | str, timeout: float | None = None) -> Task:
        """The async twin of :meth:`wait`: polls without holding a thread between reads."""
        waiter = _Waiter(self, uuid, timeout)
        while True:
            step = waiter.check(await sync_to_async(self.broker.storage.get)(uuid))
            if isinstance(step, Task):
                return step
            await asyncio.sleep(step)

    # -- the worker side ---------------------------------------------------------------
    def build_starter(
        self,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        burst: bool = False,
        poll_interval: float | None = None,
        grace: float | None = None,
        processes: int | None = None,
        max_tasks_per_child: int | None = None,
        verbosity: int = 1,
        worker_class: type[BaseWorker] | None = None,
        worker_options: dict[str, Any] | None = None,
    ) -> Starter:
        """The Starter for one worker process, around this app's Broker and registry;
        see :func:`django_qtasks.worker.starter.build_starter`."""
        from django_qtasks.worker.starter import build_starter

        return build_starter(
            self,
            queues=queues,
            concurrency=concurrency,
            burst=burst,
            poll_interval=poll_interval,
            grace=grace,
            processes=processes,
            max_tasks_per_child=max_tasks_per_child,
            verbosity=verbosity,
            worker_class=worker_class,
            worker_options=worker_options,
        )


class _Waiter:
    """The decisions of waiting for a result, without the I/O (shared by sync and async)."""

    def __init__(
        self, app: BaseQueueTasks, uuid: uuid_lib.UUID | str, timeout: float | None
    ) -> None:
        timeout = validate_timeout(timeout)
        app._check_can_wait()
        self.uuid = uuid
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.delay = 0.005
        self.max_delay = app.settings.result_poll_interval

    def check(self, task: Task | None) -> Task | float:
        """The finished task, or how long to sleep before reading again."""
        if task is None:
            raise TaskNotFound(f"No task with uuid {self.uuid}.")
        if task.is_finished:
            return task
        remaining = None if self.deadline is None else self.deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise ResultTimeout(
                f"Task {self.uuid} is still {task.status!r} after {self.timeout:g} s.", task=task
            )
        delay = self.delay if remaining is None else min(self.delay, remaining)
        self.delay = min(self.delay * 2, self.max_delay)
        return delay


def _build_options(name: str, options: dict[str, Any]) -> TaskOptions:
    """Validate ``@app.task(...)`` options once, at import time."""
    if not isinstance(name, str) or not name:
        raise TaskRegistrationError(f"A task name must be a non-empty string, got {name!r}.")
    try:
        validate_key("task name", name)
    except InvalidTaskCall as exc:
        raise TaskRegistrationError(str(exc)) from None
    known = set(TaskOptions.__dataclass_fields__) - {"name"}
    unknown = set(options) - known
    if unknown:
        raise TaskRegistrationError(
            f"Unknown option(s) for task {name!r}: {', '.join(sorted(unknown))}. "
            f"Known: {', '.join(sorted(known))}."
        )
    values = dict(options)
    if values.get("priority") is not None:
        validate_priority(values["priority"])
    if values.get("queue") is not None:
        validate_queue(values["queue"], None)
    retry = values.get("retry")
    if retry is not None and (problem := retry_problem("retry", retry)):
        raise TaskRegistrationError(f"{problem} ({name}).")
    exc_types = values.get("retry_on_exc") or ()
    if isinstance(exc_types, type):
        exc_types = (exc_types,)
    exc_types = tuple(exc_types)
    if not all(isinstance(e, type) and issubclass(e, BaseException) for e in exc_types):
        raise TaskRegistrationError(f"retry_on_exc must list exception classes ({name}).")
    values["retry_on_exc"] = exc_types
    for key in ("retry_backoff", "max_time"):
        value = values.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value < 0
            or (key == "max_time" and value == 0)
        ):
            raise TaskRegistrationError(f"{key} must be a positive number, got {value!r} ({name}).")
    tags = values.get("tags") or ()
    if isinstance(tags, str) or not all(isinstance(tag, str) for tag in tags):
        raise TaskRegistrationError(f"tags must be a list of strings, got {tags!r} ({name}).")
    values["tags"] = tuple(tags)
    for key in ("middlewares_before", "middlewares_after"):
        values[key] = tuple(resolve_middlewares(values.get(key) or ()))
    executor = values.get("executor")
    if executor is not None:
        from django_qtasks.worker.executor import BaseTaskExecutor

        if isinstance(executor, str):
            executor = import_string(executor)
        if not (isinstance(executor, type) and issubclass(executor, BaseTaskExecutor)):
            raise TaskRegistrationError(f"executor must be a BaseTaskExecutor subclass ({name}).")
        values["executor"] = executor
    _check_cron_options(name, values)
    check_concurrency_options(name, values)
    return TaskOptions(name=name, **values)


def _check_cron_options(name: str, values: dict[str, Any]) -> None:
    """``cron=``, ``cron_tz=``, ``cron_catch_up=``: a bad expression or time zone fails
    at import time, naming the task."""
    cron, tz = values.get("cron"), values.get("cron_tz")
    if cron is None:
        if tz is not None or "cron_catch_up" in values:
            raise TaskRegistrationError(f"cron_tz and cron_catch_up need cron= ({name}).")
        return
    try:
        values["cron"] = validate_cron(cron)
        if tz is not None:
            validate_tz(tz)
    except CronError as exc:
        raise TaskRegistrationError(f"Task {name!r}: {exc}.") from None
    if not isinstance(values.get("cron_catch_up", True), bool):
        raise TaskRegistrationError(f"cron_catch_up must be True or False ({name}).")


class QueueTasks(BaseQueueTasks):
    """The sync app: ``@app.task``, ``app.add_task(name, ...)``, ``app.get(uuid)``."""

    task_class = SyncTask

    @overload
    def task(self, func: Callable[..., Any], /) -> SyncTask: ...
    @overload
    def task(
        self, func: None = None, /, **options: Any
    ) -> Callable[[Callable[..., Any]], SyncTask]: ...
    def task(
        self, func: Callable[..., Any] | None = None, /, **options: Any
    ) -> SyncTask | Callable[[Callable[..., Any]], SyncTask]:
        """Register a function as a task: ``@app.task`` or ``@app.task(retry=3, ...)``."""
        if func is not None:
            return self._register(func, options)  # type: ignore[return-value]
        return lambda f: self._register(f, dict(options))  # type: ignore[return-value]

    def add_spec(self, spec: TaskSpec, *, timeout: float | None = None) -> Task:
        return self.sync_add_spec(spec, timeout=timeout)

    add_task = BaseQueueTasks.sync_add_task
    add_tasks = BaseQueueTasks.sync_add_tasks
    get = BaseQueueTasks.sync_get
    cancel = BaseQueueTasks.sync_cancel


class AsyncQueueTasks(BaseQueueTasks):
    """The async twin: the same operations, awaited."""

    task_class = AsyncTask

    @overload
    def task(self, func: Callable[..., Any], /) -> AsyncTask: ...
    @overload
    def task(
        self, func: None = None, /, **options: Any
    ) -> Callable[[Callable[..., Any]], AsyncTask]: ...
    def task(
        self, func: Callable[..., Any] | None = None, /, **options: Any
    ) -> AsyncTask | Callable[[Callable[..., Any]], AsyncTask]:
        if func is not None:
            return self._register(func, options)  # type: ignore[return-value]
        return lambda f: self._register(f, dict(options))  # type: ignore[return-value]

    async def add_spec(self, spec: TaskSpec, *, timeout: float | None = None) -> Task:
        return await sync_to_async(self.sync_add_spec)(spec, timeout=timeout)

    async def add_task(self, task_name: str, *args: Any, **kwargs: Any) -> Task:
        return await sync_to_async(self.sync_add_task)(task_name, *args, **kwargs)

    async def add_tasks(self, calls: Iterable[Any], **options: Any) -> list[Task]:
        return await sync_to_async(self.sync_add_tasks)(list(calls), **options)

    async def get(self, uuid: uuid_lib.UUID | str) -> Task | None:
        return await sync_to_async(self.sync_get)(uuid)

    async def cancel(self, uuid: uuid_lib.UUID | str, reason: str = "") -> Task | None:
        return await sync_to_async(self.sync_cancel)(uuid, reason)


__all__ = ["AsyncQueueTasks", "QueueTasks", "TaskRegistry", "build_broker"]
