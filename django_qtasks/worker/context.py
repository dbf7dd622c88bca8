"""What a task sees of itself when it asks for it with ``echo=True``."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any
from uuid import UUID

from asgiref.sync import sync_to_async

from django_qtasks.exceptions import TaskCancelled
from django_qtasks.log import task_fields

if TYPE_CHECKING:
    from django_qtasks.api.queue_tasks import BaseQueueTasks
    from django_qtasks.api.task import BaseTask
    from django_qtasks.values import Task
    from django_qtasks.worker.timelimit import Timekeeper


class TaskContext:
    """The running attempt: ids, attempt number, logging, progress and cancel.

    Middlewares receive it too; ``state`` is a free dict they may share through.
    """

    def __init__(
        self, definition: BaseTask[Any], task: Task, timekeeper: Timekeeper | None = None
    ) -> None:
        self.definition = definition
        self.task = task
        self.state: dict[str, Any] = {}
        self.timekeeper = timekeeper
        self.cancel_reason = ""
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._async_task: tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]] | None = None

    @property
    def task_uuid(self) -> UUID:
        return self.task.uuid

    @property
    def task_name(self) -> str:
        return self.task.task_name

    @property
    def attempt(self) -> int:
        """1 on the first run, 2 on the first retry, and so on."""
        return self.task.attempt

    @property
    def max_retries(self) -> int:
        return self.task.max_retries

    @property
    def queue(self) -> str:
        return self.task.queue

    def get_logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry the task's uuid, name, queue and attempt in
        ``extra`` (as the worker's own records about the task do)."""
        return logging.LoggerAdapter(
            logging.getLogger(f"django_qtasks.task.{self.task_name}"), task_fields(self.task)
        )

    def set_progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """Store the task's progress (shown in the admin); written at once, so call it
        at a human pace (every few hundred milliseconds at most), not per item.

        It is also a cancellation point: if someone cancelled the task, it raises
        :class:`TaskCancelled` instead."""
        self.check_cancelled()
        self.definition.app.broker.storage.set_progress(
            self.task_uuid, {"done": done, "total": total, "message": message}
        )

    async def aset_progress(
        self, done: float, total: float | None = None, message: str = ""
    ) -> None:
        """:meth:`set_progress` for ``async def`` tasks."""
        await sync_to_async(self.set_progress)(done, total, message)

    def cancel(self, reason: str = "") -> None:
        """End this task now as ``cancel`` (raises :class:`TaskCancelled`)."""
        raise TaskCancelled(reason)

    # -- cancellation from outside ---------------------------------------------------------
    @property
    def is_cancelled(self) -> bool:
        """True once someone asked to cancel this task (``app.cancel()``, the admin)."""
        return self._cancelled.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`TaskCancelled` if the task was asked to stop: call it between
        steps of long sync work, which cannot be interrupted safely otherwise."""
        if self._cancelled.is_set():
            raise TaskCancelled(self.cancel_reason or "cancel requested")

    def request_cancel(self, reason: str = "cancel requested") -> None:
        """Called by the Worker: flag the task, and cancel it outright if it is async."""
        with self._lock:
            self.cancel_reason = reason
            self._cancelled.set()
            if self._async_task is not None:
                loop, task = self._async_task
                loop.call_soon_threadsafe(task.cancel)

    @contextmanager
    def cancel_scope(self, task: asyncio.Future[Any]) -> Iterator[None]:
        """Make ``task`` (the running coroutine) the one :meth:`request_cancel` cancels."""
        with self._lock:
            self._async_task = (asyncio.get_running_loop(), task)
            if self._cancelled.is_set():
                task.cancel()
        try:
            yield
        finally:
            with self._lock:
                self._async_task = None

    def time_limit(self, max_time: float | None) -> AbstractContextManager[None]:
        """The Worker's time limit for sync code (none when run outside a worker)."""
        if self.timekeeper is None or max_time is None:
            return nullcontext()
        return self.timekeeper.limit(max_time)


class TaskSelf:
    """The ``self`` an ``echo=True`` task receives: ``self.ctx`` and ``self.add_task()``."""

    def __init__(self, definition: BaseTask[Any], ctx: TaskContext) -> None:
        self.definition = definition
        self.ctx = ctx

    def add_task(self, *args: Any, **kwargs: Any) -> Task:
        """Enqueue this same task again (from sync code; await ``aadd_task`` from async)."""
        app: BaseQueueTasks = self.definition.app
        return app.sync_add_task(self.definition.name, *args, **kwargs)

    async def aadd_task(self, *args: Any, **kwargs: Any) -> Task:
        return await sync_to_async(self.add_task)(*args, **kwargs)
