"""The module paths of 0.1.0.dev0's flat layout, kept working for one release.

The queue's modules moved into one package per component (docs/architecture.md#the-map).
Users' settings, imports and docs may still name the old paths
(``django_qtasks.backends.QTasksBackend``, ``django_qtasks.testing``,
``django_qtasks.executor.TaskExecutor``, ...). Rather than a file of re-exports per old
module, which would fill the package root again, one import hook makes each old name
an alias of the module that now holds the code: ``django_qtasks.executor is
django_qtasks.worker.executor``, private names included. The CHANGELOG lists them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

#: old module path -> the module that holds its code now
MOVED: dict[str, str] = {
    "django_qtasks.queue_tasks": "django_qtasks.api.queue_tasks",
    "django_qtasks.task": "django_qtasks.api.task",
    "django_qtasks.results": "django_qtasks.api.results",
    "django_qtasks.workflows": "django_qtasks.api.workflows",
    "django_qtasks.listener": "django_qtasks.broker.listener",
    "django_qtasks.counters": "django_qtasks.global_config.counters",
    "django_qtasks.concurrency": "django_qtasks.storage.concurrency",
    "django_qtasks.cursors": "django_qtasks.storage.cursors",
    "django_qtasks.db": "django_qtasks.storage.db",
    "django_qtasks.retention": "django_qtasks.storage.retention",
    "django_qtasks.storage_mysql": "django_qtasks.storage.mysql",
    "django_qtasks.starter": "django_qtasks.worker.starter",
    "django_qtasks.pool": "django_qtasks.worker.pool",
    "django_qtasks.pool_child": "django_qtasks.worker.pool_child",
    "django_qtasks.heartbeat": "django_qtasks.worker.heartbeat",
    "django_qtasks.executor": "django_qtasks.worker.executor",
    "django_qtasks.timelimit": "django_qtasks.worker.timelimit",
    "django_qtasks.inline": "django_qtasks.worker.inline",
    "django_qtasks.scheduler": "django_qtasks.worker.scheduler",
    "django_qtasks.context": "django_qtasks.worker.context",
    "django_qtasks.prefetch": "django_qtasks.worker.prefetch",
    "django_qtasks.backends": "django_qtasks.contrib.backends",
    "django_qtasks.django_tasks": "django_qtasks.contrib.django_tasks",
    "django_qtasks.metrics": "django_qtasks.contrib.metrics",
    "django_qtasks.pytest_plugin": "django_qtasks.contrib.pytest_plugin",
    "django_qtasks.testing": "django_qtasks.contrib.testing",
    "django_qtasks.dashboard": "django_qtasks.contrib.dashboard",
    "django_qtasks.status": "django_qtasks.contrib.status",
}


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module of its new path (imported once, shared)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.module: ModuleType | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        self.module = importlib.import_module(self.target)
        self.real_spec = self.module.__spec__
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamps the old path's spec on the module: give the module
        # back its own, so that it keeps one identity (pickling, reloads, spawn).
        module.__spec__ = self.real_spec


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Put the hook on ``sys.meta_path`` once per process."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
