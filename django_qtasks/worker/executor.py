"""TaskExecutor: runs one attempt of one task and says how it ended.

It calls the ``before`` middlewares, the function (sync, async or generator), the
``after`` middlewares, and turns any exception into an :class:`Outcome`: ``retry``
with a backoff when the task allows another attempt, ``error`` otherwise. It never
touches the database; the Worker stores the outcome.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import logging
import random
import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from django.utils import timezone
from django.utils.module_loading import import_string

from django_qtasks.exceptions import QTasksError, TaskCancelled, describe_exception
from django_qtasks.log import task_fields
from django_qtasks.models import TaskStatus
from django_qtasks.storage.db import is_connection_lost
from django_qtasks.values import Outcome, Task
from django_qtasks.worker.context import TaskContext, TaskSelf
from django_qtasks.worker.timelimit import TaskTimeLimitExceeded, time_limit_message

if TYPE_CHECKING:
    from django_qtasks.api.task import BaseTask
    from django_qtasks.settings import QTasksSettings

logger = logging.getLogger("django_qtasks.executor")

#: Seconds (before the jitter) before a run whose database connection was cut runs again.
LOST_CONNECTION_BACKOFF = 1.0


class NotJSONResult(QTasksError, TypeError):
    """The task returned a value that cannot be stored as JSON (never retried: it is a
    bug in the task, and running it again would repeat its side effects for nothing)."""

    # Rows record an error by its type's dotted name, and users match on it: the
    # name stays the one of the flat layout (which still imports) when the code moves.
    __module__ = "django_qtasks.executor"


def not_json_result(value: Any, exc: Exception) -> NotJSONResult:
    """The NotJSONResult for a result that failed to encode with ``exc``: a value JSON
    has no form for (TypeError, ValueError), or one nested past the recursion limit of
    the encoder (RecursionError)."""
    kind = type(value).__name__
    if isinstance(exc, RecursionError):
        return NotJSONResult(
            f"The task returned a {kind} nested too deep to be stored as JSON: {exc}."
        )
    return NotJSONResult(f"The task returned a {kind}, which cannot be stored as JSON: {exc}.")


def resolve_middlewares(items: Iterable[Any]) -> list[Any]:
    """Dotted paths, classes or instances -> instances."""
    resolved = []
    for item in items:
        obj = import_string(item) if isinstance(item, str) else item
        resolved.append(obj() if isinstance(obj, type) else obj)
    return resolved


def retry_delay(backoff: float, attempt: int, cap: float) -> float:
    """Exponential backoff with jitter: ``backoff * 2**(attempt-1)`` seconds, capped,
    then a random point in its upper half so that retries of many tasks spread out."""
    if backoff <= 0:
        return 0.0
    delay = min(cap, backoff * 2.0 ** (attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not security


class BaseTaskExecutor(ABC):
    """The interface of a TaskExecutor. One instance may serve many threads."""

    def __init__(self, settings: QTasksSettings) -> None:
        self.settings = settings

    def max_time(self, definition: BaseTask[Any]) -> float | None:
        return definition.options.max_time or self.settings.default_max_time

    def failure(self, definition: BaseTask[Any], task: Task, exc: BaseException) -> Outcome:
        """``retry`` if another attempt is allowed and the error matches, else ``error``."""
        options = definition.options
        error = describe_exception(exc)
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if self.settings.mode == "worker" and is_connection_lost(exc, self.settings.database):
            # Not the task's fault: the run goes back as a rescue, after a short pause
            # (the database may be restarting), whatever the task's retry policy.
            delay = retry_delay(LOST_CONNECTION_BACKOFF, 1, self.settings.retry_backoff_max)
            return Outcome(
                status=TaskStatus.RETRY,
                error=error,
                traceback=text,
                run_after=timezone.now() + dt.timedelta(seconds=delay),
                lost=True,
            )
        retryable = not isinstance(exc, NotJSONResult) and (
            not options.retry_on_exc or isinstance(exc, options.retry_on_exc)
        )
        if retryable and isinstance(exc, Exception) and task.attempt <= task.max_retries:
            backoff = (
                options.retry_backoff
                if options.retry_backoff is not None
                else self.settings.default_retry_backoff
            )
            delay = retry_delay(backoff, task.attempt, self.settings.retry_backoff_max)
            return Outcome(
                status=TaskStatus.RETRY,
                error=error,
                traceback=text,
                run_after=timezone.now() + dt.timedelta(seconds=delay),
            )
        return Outcome(status=TaskStatus.ERROR, error=error, traceback=text)

    @abstractmethod
    def execute(
        self, definition: BaseTask[Any], task: Task, ctx: TaskContext | None = None
    ) -> Outcome:
        """Run one attempt; ``ctx`` comes from the Worker (cancel flag, time limits)."""


class TaskExecutor(BaseTaskExecutor):
    """The default executor."""

    def __init__(self, settings: QTasksSettings) -> None:
        super().__init__(settings)
        self.global_before = resolve_middlewares(settings.middlewares_before)
        self.global_after = resolve_middlewares(settings.middlewares_after)

    def execute(
        self, definition: BaseTask[Any], task: Task, ctx: TaskContext | None = None
    ) -> Outcome:
        ctx = ctx or TaskContext(definition, task)
        options = definition.options
        try:
            for middleware in [*self.global_before, *options.middlewares_before]:
                middleware.before(ctx)
            args = [TaskSelf(definition, ctx), *task.args] if options.echo else list(task.args)
            value = self.call(definition, args, task.kwargs, ctx)
            outcome = Outcome(
                status=TaskStatus.SUCCESS, returning=value, returning_json=self.check_result(value)
            )
        except TaskCancelled as exc:
            # A cancel from outside already recorded who asked and why.
            outcome = Outcome(
                status=TaskStatus.CANCEL,
                error=None if ctx.is_cancelled else describe_exception(exc),
                traceback="" if ctx.is_cancelled else traceback.format_exc(),
            )
        except BaseException as exc:  # even KeyboardInterrupt: it must not end a worker thread
            outcome = (
                Outcome(status=TaskStatus.CANCEL)  # it failed while being cancelled
                if ctx.is_cancelled
                else self.failure(definition, task, exc)
            )
        for middleware in [*self.global_after, *options.middlewares_after]:
            try:
                middleware.after(ctx, outcome)
            except Exception as exc:
                logger.exception(
                    "Middleware %r failed after task %s",
                    middleware,
                    task.uuid,
                    extra=task_fields(task, action="middleware_failed"),
                )
                outcome = Outcome(
                    status=TaskStatus.ERROR,
                    error=describe_exception(exc),
                    traceback=traceback.format_exc(),
                )
        return outcome

    def call(
        self,
        definition: BaseTask[Any],
        args: list[Any],
        kwargs: dict[str, Any],
        ctx: TaskContext,
    ) -> Any:
        """Call the function: sync ones under the thread's time limit, async ones on an
        event loop with ``asyncio`` timeouts and cancellation. Generators give a list."""
        func = definition.func
        max_time = self.max_time(definition)
        if definition.is_async:
            # async_to_sync, not asyncio.run: the task's sync_to_async calls (and Django's
            # async ORM) then run on this worker thread, with its own connection.
            return async_to_sync(self._call_async)(func, args, kwargs, max_time, ctx)
        with ctx.time_limit(max_time):
            result = func(*args, **kwargs)
            if inspect.isgenerator(result):
                return list(result)
            return result

    async def _call_async(
        self,
        func: Any,
        args: list[Any],
        kwargs: dict[str, Any],
        max_time: float | None,
        ctx: TaskContext,
    ) -> Any:
        async def run() -> Any:
            if inspect.isasyncgenfunction(func):
                return [item async for item in func(*args, **kwargs)]
            return await func(*args, **kwargs)

        inner = asyncio.ensure_future(run())
        with ctx.cancel_scope(inner):
            # asyncio.wait, not wait_for: a TimeoutError the task raises itself must stay
            # its own error, not read as our time limit.
            done, _ = await asyncio.wait({inner}, timeout=max_time)
            if not done:
                inner.cancel()
                await asyncio.gather(inner, return_exceptions=True)
                raise TaskTimeLimitExceeded(time_limit_message(max_time or 0))
            try:
                return inner.result()
            except asyncio.CancelledError:
                if ctx.is_cancelled:
                    raise TaskCancelled(ctx.cancel_reason) from None
                raise

    @staticmethod
    def check_result(value: Any) -> str:
        """The result as the JSON to store (encoded once), or NotJSONResult: for a value
        JSON has no form for, and for one nested past the encoder's recursion limit."""
        try:
            return json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise not_json_result(value, exc) from None
