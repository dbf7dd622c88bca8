"""django-qtasks: a background task queue in your Django project's own database.

``from django_qtasks import app`` gives the project's :class:`QueueTasks`, built
from ``settings.QTASKS`` on first use; ``async_app`` is its async twin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django_qtasks import _moved, values

_moved.install()  # the old flat module paths, for one release

__version__ = "0.1.0.dev0"

if TYPE_CHECKING:
    from django_qtasks.api.queue_tasks import AsyncQueueTasks, QueueTasks
    from django_qtasks.api.results import AsyncResult, SyncResult
    from django_qtasks.api.task import AsyncTask, SyncTask, TaskCls
    from django_qtasks.api.workflows import Chain, Group, chain, group
    from django_qtasks.models import TaskStatus
    from django_qtasks.values import Task

    app: QueueTasks
    async_app: AsyncQueueTasks

_LAZY = {
    "QueueTasks": "api.queue_tasks",
    "AsyncQueueTasks": "api.queue_tasks",
    "SyncTask": "api.task",
    "AsyncTask": "api.task",
    "Task": "values",
    "TaskCls": "api.task",
    "SyncResult": "api.results",
    "AsyncResult": "api.results",
    "TaskStatus": "models",
    "TaskContext": "worker.context",
    "TaskSelf": "worker.context",
    "chain": "api.workflows",
    "group": "api.workflows",
    "Chain": "api.workflows",
    "Group": "api.workflows",
}
_project_apps: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """Import lazily, so that ``import django_qtasks`` works before apps are ready."""
    from importlib import import_module

    if name in {"app", "async_app"}:
        if not _project_apps:
            _require_installed()
            from django_qtasks.api.queue_tasks import AsyncQueueTasks, QueueTasks

            sync_app = QueueTasks()
            _project_apps["app"] = sync_app
            _project_apps["async_app"] = AsyncQueueTasks(shared_with=sync_app)
        return _project_apps[name]
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _project_app() -> QueueTasks:
    app: QueueTasks = __getattr__("app")
    return app


# Task.cancel() and Task.refresh() go through the project's app; the snapshot sits below
# the API, so it is told how to reach the app instead of importing this package.
values.use_project_app(_project_app)


def _require_installed() -> None:
    """The project's app needs our models and commands: without ``django_qtasks`` in
    ``INSTALLED_APPS``, say so, instead of Django's "Model class ... doesn't declare an
    explicit app_label" from deep inside the first ``@app.task``."""
    from django.apps import apps
    from django.core.exceptions import ImproperlyConfigured

    if apps.apps_ready and not apps.is_installed(__name__):
        raise ImproperlyConfigured(
            f"{__name__}.app is used, but {__name__!r} is not in INSTALLED_APPS. Add it "
            f'(INSTALLED_APPS += ["{__name__}"]) and run "python manage.py migrate": the '
            "task table and the qtasks_worker command come with the app."
        )


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
