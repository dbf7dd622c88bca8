"""The worker side: the Starter, the Worker (threads, or a pool of processes), the
TaskExecutor that runs one attempt, and their helpers (claiming ahead, heartbeat, time
limits, periodic tasks, the in-process runner of immediate mode).

``BaseWorker`` is the interface and ``ThreadWorker`` the default (``QTASKS["WORKER"]``);
other names come from :mod:`django_qtasks.worker.worker`."""

from __future__ import annotations

from django_qtasks._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, "worker")
