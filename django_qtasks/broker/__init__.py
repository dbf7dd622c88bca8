"""Broker: takes new tasks and saves them through Storage, hands ready tasks to the
Worker, and wakes it when work arrives (PostgreSQL LISTEN/NOTIFY, or polling).

``BaseBroker`` is the interface, ``DjangoBroker`` the default (``QTASKS["BROKER"]``); the
package looks other names up in :mod:`django_qtasks.broker.broker`, its old flat module."""

from __future__ import annotations

from django_qtasks._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, "broker")
