"""GlobalConfig: shared, cross-process key/value state.

Worker registrations, queue flags and runtime settings are rows of ``ConfigEntry``
grouped by ``name``; a row with ``expires_at`` in the past reads as absent, which is
what makes heartbeats work without a coordinator.
"""

from __future__ import annotations

import datetime as dt
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from typing import Any

from django.db import OperationalError, connections, transaction
from django.db.models import Q
from django.utils import timezone

from django_qtasks.models import ConfigEntry
from django_qtasks.settings import QTasksSettings
from django_qtasks.signals import component_started, component_stopped
from django_qtasks.storage.db import is_lock_conflict

logger = logging.getLogger("django_qtasks.global_config")


class BaseGlobalConfig(ABC):
    """The interface every GlobalConfig implements."""

    component_name = "global_config"

    def __init__(self, settings: QTasksSettings) -> None:
        self.settings = settings

    def start(self) -> None:
        component_started.send(sender=type(self), component=self, name=self.component_name)

    def stop(self) -> None:
        component_stopped.send(sender=type(self), component=self, name=self.component_name)

    @abstractmethod
    def get(self, name: str, key: str, default: Any = None) -> Any:
        """The value, or ``default`` when absent or expired."""

    @abstractmethod
    def set(self, name: str, key: str, value: Any, ttl: float | None = None) -> None:
        """Store a value; with ``ttl`` (seconds) it reads as absent once that has passed."""

    @abstractmethod
    def delete(self, name: str, key: str) -> None: ...

    @abstractmethod
    def items(self, name: str) -> dict[str, Any]:
        """Every live ``key -> value`` under ``name``."""

    def valid_items(
        self, name: str, check: Callable[[str, Any], str | None]
    ) -> dict[str, Any]:
        """:meth:`items`, without the entries ``check`` finds fault with: it returns what
        is wrong with one (or ``None``). Entries can be written by hand, so what the queue
        reads goes through here: a bad one is logged (once per process and value) and
        ignored, instead of stopping every worker that reads it."""
        good = {}
        for key, value in self.items(name).items():
            fault = check(key, value)
            if fault is None:
                good[key] = value
            else:
                _warn_once(name, key, value, fault)
        return good

    @abstractmethod
    def purge_expired(self, name: str) -> int:
        """Delete the expired entries under ``name`` (they read as absent already)."""

    @abstractmethod
    def merge(
        self,
        name: str,
        key: str,
        combine: Callable[[Any, list[Any]], Any],
        take: Collection[str] = (),
    ) -> None:
        """Atomically set ``key`` to ``combine(its value or None, [values of the take
        entries])`` and delete the ``take`` entries (those that exist).

        A read-modify-write that concurrent writers cannot interleave: counters that
        several processes add to, or fold into one entry, stay exact."""


_warned: set[tuple[str, str, str]] = set()


def _warn_once(name: str, key: str, value: Any, fault: str) -> None:
    shown = repr(value)
    if (name, key, shown) in _warned:
        return
    if len(_warned) < 10_000:  # a bound, for entries that change all the time
        _warned.add((name, key, shown))
    logger.warning(
        "Ignoring the GlobalConfig entry %r %r: %s (its value: %.200s). Fix or delete it "
        "in the admin.",
        name,
        key,
        fault,
        shown,
        extra={"action": "bad_config", "config_name": name, "config_key": key},
    )


_MERGE_TRIES = 5  # a merge that InnoDB rolled back for a deadlock runs again


class DjangoGlobalConfig(BaseGlobalConfig):
    """GlobalConfig on the ``ConfigEntry`` model, in the ``QTASKS['DATABASE']`` database."""

    def _entries(self, name: str) -> Any:
        live = Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
        return ConfigEntry.objects.using(self.settings.database).filter(live, name=name)

    def get(self, name: str, key: str, default: Any = None) -> Any:
        entry = self._entries(name).filter(key=key).values_list("value", flat=True).first()
        return default if entry is None else entry

    def set(self, name: str, key: str, value: Any, ttl: float | None = None) -> None:
        expires_at = None if ttl is None else timezone.now() + dt.timedelta(seconds=ttl)
        # One INSERT ... ON CONFLICT DO UPDATE: no read-then-write transaction, which
        # SQLite would refuse under concurrent writers instead of waiting.
        # (MariaDB/MySQL: ON DUPLICATE KEY UPDATE, which names no conflict target.)
        alias = self.settings.database
        target = connections[alias].features.supports_update_conflicts_with_target
        ConfigEntry.objects.using(alias).bulk_create(
            [ConfigEntry(name=name, key=key, value=value, expires_at=expires_at)],
            update_conflicts=True,
            unique_fields=["name", "key"] if target else None,
            update_fields=["value", "expires_at", "updated_at"],
        )

    def delete(self, name: str, key: str) -> None:
        ConfigEntry.objects.using(self.settings.database).filter(name=name, key=key).delete()

    def items(self, name: str) -> dict[str, Any]:
        return dict(self._entries(name).values_list("key", "value"))

    def purge_expired(self, name: str) -> int:
        entries = ConfigEntry.objects.using(self.settings.database)
        deleted, _ = entries.filter(name=name, expires_at__lte=timezone.now()).delete()
        return deleted

    def merge(
        self,
        name: str,
        key: str,
        combine: Callable[[Any, list[Any]], Any],
        take: Collection[str] = (),
    ) -> None:
        alias = self.settings.database
        for attempt in range(1, _MERGE_TRIES + 1):
            try:
                return self._merge_once(name, key, combine, take)
            except OperationalError as exc:
                # MariaDB: two merges that found the row present hold shared locks from
                # their INSERT IGNOREs and both want it exclusive; InnoDB rolls one back.
                if attempt == _MERGE_TRIES or not is_lock_conflict(exc, alias):
                    raise

    def _merge_once(
        self, name: str, key: str, combine: Callable[[Any, list[Any]], Any], take: Collection[str]
    ) -> None:
        alias = self.settings.database
        entries = ConfigEntry.objects.using(alias)
        with transaction.atomic(using=alias):
            # Make sure the row exists, then lock it with the taken ones, in key order so
            # that two merges over overlapping keys cannot deadlock. The INSERT comes
            # first, so SQLite takes its write lock before reading anything. MariaDB
            # locks first and inserts only a missing row: its INSERT IGNORE of a present
            # row leaves a shared lock, and two merges holding one deadlock on FOR UPDATE.
            keys = {key, *take}

            def lock() -> dict[str, ConfigEntry]:
                chosen = entries.select_for_update().filter(name=name, key__in=keys)
                return {row.key: row for row in chosen.order_by("key")}

            locked_first = connections[alias].vendor == "mysql"
            rows = lock() if locked_first else {}
            if key not in rows:
                entries.bulk_create(
                    [ConfigEntry(name=name, key=key, value=None)], ignore_conflicts=True
                )
                rows = lock()
            target = rows.pop(key)
            now = timezone.now()
            current = (
                target.value if target.expires_at is None or target.expires_at > now else None
            )
            target.value = combine(current, [row.value for row in rows.values()])
            target.expires_at = None
            target.save(update_fields=["value", "expires_at", "updated_at"])
            if rows:
                entries.filter(pk__in=[row.pk for row in rows.values()]).delete()
