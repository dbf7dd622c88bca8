"""django-qtasks: a background task queue in your Django project's own database.

``from django_qtasks import app`` gives the project's :class:`QueueTasks`, built
from ``settings.QTASKS`` on first use; ``async_app`` is its async twin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

if TYPE_CHECKING:
    from .models import TaskStatus
    from .queue_tasks import AsyncQueueTasks, QueueTasks
    from .results import AsyncResult, SyncResult
    from .task import AsyncTask, SyncTask, Task, TaskCls
    from .workflows import Chain, Group, chain, group

    app: QueueTasks
    async_app: AsyncQueueTasks

_LAZY = {
    "QueueTasks": "queue_tasks",
    "AsyncQueueTasks": "queue_tasks",
    "SyncTask": "task",
    "AsyncTask": "task",
    "Task": "task",
    "TaskCls": "task",
    "SyncResult": "results",
    "AsyncResult": "results",
    "TaskStatus": "models",
    "TaskContext": "context",
    "TaskSelf": "context",
    "chain": "workflows",
    "group": "workflows",
    "Chain": "workflows",
    "Group": "workflows",
}
_project_apps: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """Import lazily, so that ``import django_qtasks`` works before apps are ready."""
    from importlib import import_module

    if name in {"app", "async_app"}:
        if not _project_apps:
            from .queue_tasks import AsyncQueueTasks, QueueTasks

            sync_app = QueueTasks()
            _project_apps["app"] = sync_app
            _project_apps["async_app"] = AsyncQueueTasks(shared_with=sync_app)
        return _project_apps[name]
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AsyncQueueTasks",
    "AsyncResult",
    "AsyncTask",
    "Chain",
    "Group",
    "QueueTasks",
    "SyncResult",
    "SyncTask",
    "Task",
    "TaskCls",
    "TaskContext",
    "TaskSelf",
    "TaskStatus",
    "app",
    "async_app",
    "chain",
    "group",
]
