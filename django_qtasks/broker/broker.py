"""Broker: the worker side's way to Storage and GlobalConfig, and its wait for work.

It owns (and starts) Storage, and hands it out as ``broker.storage`` rather than
restating its methods. Its own jobs: waiting for work (polling on every database, and
a wake-up channel where the database has one), and the workers' heartbeats and the
queues' pause flags in GlobalConfig.
"""

from __future__ import annotations

import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from django_qtasks.broker.listener import Listener
from django_qtasks.global_config.counters import retire_orphans
from django_qtasks.global_config.global_config import BaseGlobalConfig
from django_qtasks.global_config.shapes import queue_flag_fault, worker_fault
from django_qtasks.settings import QTasksSettings, import_component
from django_qtasks.signals import component_started, component_stopped
from django_qtasks.storage.build import storage_class
from django_qtasks.storage.cursors import session_state_wanted
from django_qtasks.storage.interface import QUEUES, WORKERS, BaseStorage


def build_broker(settings: QTasksSettings) -> BaseBroker:
    """Broker -> Storage -> GlobalConfig, each class taken from the settings."""
    global_config: BaseGlobalConfig = import_component(settings, "global_config", BaseGlobalConfig)(
        settings
    )
    storage = storage_class(settings)(settings, global_config)
    broker: BaseBroker = import_component(settings, "broker", BaseBroker)(settings, storage)
    return broker


# Storage's methods the Broker used to restate. They still answer on a Broker for one
# release, with a DeprecationWarning: call them on ``broker.storage``.
DEPRECATED_FORWARDS = frozenset({
    "add", "add_many", "add_flow", "get", "claim", "finish", "finish_many", "set_progress",
    "cancel", "cancel_requests", "requeue", "rescue", "rescue_run", "release",
    "next_run_after", "add_scheduled", "last_schedule_runs", "prune", "count_prunable",
    "prune_schedule_runs",
})  # fmt: skip


class BaseBroker(ABC):
    """The interface every Broker implements.

    A Broker holds the Storage (``storage``) and the GlobalConfig (``config``) and is
    the worker side's path to both: the worker calls ``broker.storage.claim(...)``,
    not a Broker method that passes it on. What the Broker does itself is what no
    Storage call says: waiting for work (:meth:`wait_for_work`), and the workers' and
    queues' state in GlobalConfig (heartbeats, paused queues)."""

    component_name = "broker"

    def __init__(self, settings: QTasksSettings, storage: BaseStorage) -> None:
        self.settings = settings
        self.storage = storage
        self.config: BaseGlobalConfig = storage.global_config

    def start(self) -> None:
        component_started.send(sender=type(self), component=self, name=self.component_name)
        self.storage.start()

    def stop(self) -> None:
        self.storage.stop()
        component_stopped.send(sender=type(self), component=self, name=self.component_name)

    if not TYPE_CHECKING:  # hidden from mypy, so that a typo on a Broker stays an error

        def __getattr__(self, name: str) -> Any:
            # Only reached for what the instance and its class lack: the old forwards.
            if name in DEPRECATED_FORWARDS:
                warnings.warn(
                    f"Broker.{name}() is deprecated; call broker.storage.{name}() instead.",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(self.storage, name)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @abstractmethod
    def wait_for_work(
        self,
        timeout: float,
        stop: threading.Event,
        queues: Collection[str] | None = None,
    ) -> None:
        """Return when work may be ready in ``queues``, after ``timeout`` at the latest,
        or on ``stop``."""

    # -- the workers and queues, in GlobalConfig ------------------------------------------
    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl: float) -> None:
        """Say this worker is alive for ``ttl`` more seconds."""
        self.config.set(WORKERS, worker_id, info, ttl=ttl)

    def forget_worker(self, worker_id: str) -> None:
        self.config.delete(WORKERS, worker_id)

    def live_workers(self) -> dict[str, Any]:
        return self.config.valid_items(WORKERS, worker_fault)

    def forget_dead_workers(self) -> int:
        """Drop expired heartbeat rows (after their tasks were rescued), and fold the dead
        workers' task counters into the retired totals (see :mod:`.counters`)."""
        config = self.config
        forgotten = config.purge_expired(WORKERS)
        if forgotten:
            retire_orphans(config, config.items(WORKERS))
        return forgotten

    def set_queue_paused(self, queue: str, paused: bool) -> None:
        config = self.config
        if paused:
            config.set(QUEUES, queue, {"paused": True, "since": timezone.now().isoformat()})
        else:
            config.delete(QUEUES, queue)

    def paused_queues(self) -> set[str]:
        items = self.config.valid_items(QUEUES, queue_flag_fault)
        return {queue for queue, value in items.items() if value.get("paused")}


class DjangoBroker(BaseBroker):
    """The Broker for the Django ORM storage: polls for work, and listens for it where
    the database can notify (PostgreSQL)."""

    def __init__(self, settings: QTasksSettings, storage: BaseStorage) -> None:
        super().__init__(settings, storage)
        self._listeners = threading.local()

    def wait_for_work(
        self,
        timeout: float,
        stop: threading.Event,
        queues: Collection[str] | None = None,
    ) -> None:
        """Sleep until a task is enqueued (PostgreSQL: LISTEN), ``timeout`` passes, or
        ``stop`` is set; in slices, so a stop is seen within a quarter second."""
        listener = self._listener()
        if listener is None:
            stop.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            woken = listener.wait(min(remaining, 0.25), queues)
            if woken:
                return
            if woken is None:
                stop.wait(remaining)
                return

    def _listener(self) -> Listener | None:
        """This thread's listener, when the database can notify and it is wanted."""
        if not session_state_wanted(self.settings.listen_notify, self.settings.database):
            return None
        listener: Listener | None = getattr(self._listeners, "listener", None)
        if listener is None:
            listener = self._listeners.listener = Listener(self.settings.database)
        return listener

    def stop(self) -> None:
        listener = getattr(self._listeners, "listener", None)
        if listener is not None:
            listener.close()
        super().stop()
