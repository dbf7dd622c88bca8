"""The worker side: the Starter (and ``build_starter``), the Worker (threads, or a pool
of processes), the TaskExecutor that runs one attempt, and their helpers. A thread
worker is built from its claim loop, thread pool, completer and database retrying
(``claimloop``, ``threadpool``, ``completer``, ``dbretry``, sharing ``slots``); the
helpers claim ahead, beat, enforce time limits, run periodic tasks, and run tasks in
the caller's thread for immediate mode.

``BaseWorker`` is the interface and ``ThreadWorker`` the default (``QTASKS["WORKER"]``);
other names come from :mod:`django_qtasks.worker.worker`."""

from __future__ import annotations

from django_qtasks._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, "worker")
