"""What a task sees of itself when it asks for it with ``echo=True``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from uuid import UUID

from .exceptions import TaskCancelled

if TYPE_CHECKING:
    from .queue_tasks import BaseQueueTasks
    from .task import BaseTask, Task


class TaskContext:
    """The running attempt: ids, attempt number, logging, progress and cancel.

    Middlewares receive it too; ``state`` is a free dict they may share through.
    """

    def __init__(self, definition: BaseTask[Any], task: Task) -> None:
        self.definition = definition
        self.task = task
        self.state: dict[str, Any] = {}

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
        """A logger whose records carry the task's uuid, name and attempt in ``extra``."""
        return logging.LoggerAdapter(
            logging.getLogger(f"django_qtasks.task.{self.task_name}"),
            {
                "task_uuid": str(self.task_uuid),
                "task_name": self.task_name,
                "attempt": self.attempt,
            },
        )

    def set_progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """Store the task's progress (shown in the admin); written at once, so call it
        at a human pace (every few hundred milliseconds at most), not per item."""
        self.definition.app.broker.set_progress(
            self.task_uuid, {"done": done, "total": total, "message": message}
        )

    def cancel(self, reason: str = "") -> None:
        """End this task now as ``cancel`` (raises :class:`TaskCancelled`)."""
        raise TaskCancelled(reason)


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
        from asgiref.sync import sync_to_async

        return await sync_to_async(self.add_task, thread_sensitive=False)(*args, **kwargs)
