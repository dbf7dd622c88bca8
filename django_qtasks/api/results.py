"""Handles on a task's result: ``SyncResult(uuid).result(timeout)`` and its async twin."""

from __future__ import annotations

import uuid as uuid_lib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django_qtasks.api.queue_tasks import BaseQueueTasks
    from django_qtasks.values import Task


def _default_app() -> BaseQueueTasks:
    from django_qtasks import app

    return app


class SyncResult:
    """Wait for a task and return its finished snapshot."""

    def __init__(self, uuid: uuid_lib.UUID | str, app: BaseQueueTasks | None = None) -> None:
        self.uuid = uuid
        self.app = app or _default_app()

    def result(self, timeout: float | None = None) -> Task:
        """The finished task; raises ``ResultTimeout`` (a ``TimeoutError``) after ``timeout``."""
        return self.app.wait(self.uuid, timeout)


class AsyncResult(SyncResult):
    """``await AsyncResult(uuid).result(timeout)``."""

    async def result(self, timeout: float | None = None) -> Task:  # type: ignore[override]
        return await self.app.await_result(self.uuid, timeout)
