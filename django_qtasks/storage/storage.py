"""Deprecated: the module that held all of Storage before it was split by concept.

Its names now live in the modules of :mod:`django_qtasks.storage` (``interface``,
``rows``, ``table``, ``enqueue``, ``claim``, ``finish``, ``rescue``, ``flows``,
``schedules``, ``pruning``, ``django_storage``). Old imports keep working for one
release (CHANGELOG, Deprecated): the public names are re-exported here, and any other
name of the old module is looked up in the modules that hold it now.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django_qtasks.storage.claim import CLAIM_ASYNC_COMMIT, CLAIM_PLANNER_SETTINGS, claim_settings
from django_qtasks.storage.django_storage import DjangoStorage
from django_qtasks.storage.interface import QUEUES, WORKERS, BaseStorage, LastRun
from django_qtasks.storage.rows import pg_insert_one
from django_qtasks.storage.table import (
    CANCELLED,
    SUPPORTED_VENDORS,
    WORKER_LOST,
    supported_vendor_list,
)

__all__ = [
    "CANCELLED", "CLAIM_ASYNC_COMMIT", "CLAIM_PLANNER_SETTINGS", "QUEUES", "SUPPORTED_VENDORS",
    "WORKERS", "WORKER_LOST", "BaseStorage", "DjangoStorage", "LastRun", "claim_settings",
    "pg_insert_one", "supported_vendor_list",
]  # fmt: skip

_HOMES = ("rows", "table", "claim", "enqueue", "finish", "rescue", "flows", "pruning")


def __getattr__(name: str) -> Any:
    """The old module's private names (``_new_rows``, ``_claim_order``, ...)."""
    for home in _HOMES:
        module = import_module(f"django_qtasks.storage.{home}")
        if name in vars(module):
            return vars(module)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
