"""GlobalConfig: state shared across processes (worker heartbeats, paused queues,
task counters).

``BaseGlobalConfig`` is the interface, ``DjangoGlobalConfig`` the default
(``QTASKS["GLOBAL_CONFIG"]``); other names come from
:mod:`django_qtasks.global_config.global_config`."""

from __future__ import annotations

from django_qtasks._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, "global_config")
