"""Broker: takes new tasks, hands ready ones to the Worker, proxies reads to Storage.

It owns (and starts) Storage. Waiting for work is the Broker's job too: polling on
every database, and a wake-up channel where the database has one.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid as uuid_lib
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from typing import Any

from django.utils import timezone

from django_qtasks.broker.listener import Listener
from django_qtasks.global_config.counters import retire_orphans
from django_qtasks.global_config.global_config import BaseGlobalConfig
from django_qtasks.global_config.shapes import queue_flag_fault, worker_fault
from django_qtasks.models import FINISHED_STATUSES
from django_qtasks.settings import QTasksSettings, import_component
from django_qtasks.signals import component_started, component_stopped
from django_qtasks.storage.build import storage_class
from django_qtasks.storage.cursors import session_state_wanted
from django_qtasks.storage.interface import QUEUES, WORKERS, BaseStorage, LastRun
from django_qtasks.values import Outcome, Task, TaskSpec


def build_broker(settings: QTasksSettings) -> BaseBroker:
    """Broker -> Storage -> GlobalConfig, each class taken from the settings."""
    global_config: BaseGlobalConfig = import_component(settings, "global_config", BaseGlobalConfig)(
        settings
    )
    storage = storage_class(settings)(settings, global_config)
    broker: BaseBroker = import_component(settings, "broker", BaseBroker)(settings, storage)
    return broker


class BaseBroker(ABC):
    """The interface every Broker implements."""

    component_name = "broker"

    def __init__(self, settings: QTasksSettings, storage: BaseStorage) -> None:
        self.settings = settings
        self.storage = storage
        # The worker side reaches GlobalConfig through the Broker, as it does Storage.
        self.config: BaseGlobalConfig = storage.global_config

    def start(self) -> None:
        component_started.send(sender=type(self), component=self, name=self.component_name)
        self.storage.start()

    def stop(self) -> None:
        self.storage.stop()
        component_stopped.send(sender=type(self), component=self, name=self.component_name)

    @abstractmethod
    def add(self, spec: TaskSpec) -> tuple[Task, bool]:
        """Store a new task; see :meth:`BaseStorage.add`."""

    @abstractmethod
    def add_many(self, specs: Sequence[TaskSpec]) -> list[Task]:
        """Store many new tasks at once; see :meth:`BaseStorage.add_many`."""

    @abstractmethod
    def get(self, uuid: uuid_lib.UUID | str) -> Task | None: ...

    @abstractmethod
    def claim(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        *,
        exclude: Collection[str] = (),
        uuids: Collection[uuid_lib.UUID] | None = None,
    ) -> list[Task]:
        """Claim ready tasks for ``worker_id``; see :meth:`BaseStorage.claim`."""

    @abstractmethod
    def finish_many(self, items: Sequence[tuple[Task, Outcome]]) -> list[bool]: ...

    def finish(self, task: Task, outcome: Outcome) -> bool:
        return self.finish_many([(task, outcome)])[0]

    @abstractmethod
    def wait_for_work(
        self,
        timeout: float,
        stop: threading.Event,
        queues: Collection[str] | None = None,
    ) -> None:
        """Return when work may be ready in ``queues``, after ``timeout`` at the latest,
        or on ``stop``."""

    # Shared by every Broker: they only pass through to Storage and GlobalConfig.
    def set_progress(self, uuid: uuid_lib.UUID, progress: dict[str, Any]) -> None:
        self.storage.set_progress(uuid, progress)

    def cancel(self, uuid: uuid_lib.UUID | str, reason: str = "") -> Task | None:
        return self.storage.cancel(uuid, reason)

    def add_flow(self, specs: Sequence[TaskSpec]) -> list[Task]:
        """Store the tasks of a chain or group; see :meth:`BaseStorage.add_flow`."""
        return self.storage.add_flow(specs)

    def cancel_requests(self, worker_id: str) -> set[uuid_lib.UUID]:
        return self.storage.cancel_requests(worker_id)

    def rescue(
        self,
        worker_id: str | None = None,
        *,
        crashed: bool = True,
        keep: Collection[uuid_lib.UUID] = (),
    ) -> list[tuple[uuid_lib.UUID, str]]:
        return self.storage.rescue(worker_id, crashed=crashed, keep=keep)

    def rescue_run(self, task: Task, why: str, *, delay: float = 0.0) -> str | None:
        """Rescue one run its worker lost; see :meth:`BaseStorage.rescue_run`."""
        return self.storage.rescue_run(task, why, delay=delay)

    def release(self, worker_id: str, uuids: Collection[uuid_lib.UUID]) -> int:
        """Hand back claimed tasks that never started; see :meth:`BaseStorage.release`."""
        return self.storage.release(worker_id, uuids)

    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl: float) -> None:
        """Say this worker is alive for ``ttl`` more seconds."""
        self.config.set(WORKERS, worker_id, info, ttl=ttl)

    def forget_worker(self, worker_id: str) -> None:
        self.config.delete(WORKERS, worker_id)

    def next_run_after(
        self, queues: Sequence[str] | None, exclude: Collection[str] = ()
    ) -> dt.datetime | None:
        return self.storage.next_run_after(queues, exclude)

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

    def requeue(self, uuid: uuid_lib.UUID | str) -> Task | None:
        return self.storage.requeue(uuid)

    def set_queue_paused(self, queue: str, paused: bool) -> None:
        config = self.config
        if paused:
            config.set(QUEUES, queue, {"paused": True, "since": timezone.now().isoformat()})
        else:
            config.delete(QUEUES, queue)

    def paused_queues(self) -> set[str]:
        items = self.config.valid_items(QUEUES, queue_flag_fault)
        return {queue for queue, value in items.items() if value.get("paused")}

    # Schedules and retention: Storage does the work (docs/periodic-tasks.md, retention.md).
    def add_scheduled(
        self, schedule: str, tick: dt.datetime, spec: TaskSpec, worker_id: str = ""
    ) -> Task | None:
        return self.storage.add_scheduled(schedule, tick, spec, worker_id)

    def last_schedule_runs(self, names: Collection[str]) -> dict[str, LastRun]:
        return self.storage.last_schedule_runs(names)

    def prune(
        self,
        before: dt.datetime,
        statuses: Collection[str] = FINISHED_STATUSES,
        limit: int = 1000,
    ) -> int:
        return self.storage.prune(before, statuses, limit)

    def count_prunable(
        self, before: dt.datetime, statuses: Collection[str] = FINISHED_STATUSES
    ) -> int:
        return self.storage.count_prunable(before, statuses)

    def prune_schedule_runs(self, before: dt.datetime, limit: int = 1000) -> int:
        return self.storage.prune_schedule_runs(before, limit)


class DjangoBroker(BaseBroker):
    """The Broker for the Django ORM storage: claims through Storage, polls for work."""

    def add(self, spec: TaskSpec) -> tuple[Task, bool]:
        return self.storage.add(spec)

    def add_many(self, specs: Sequence[TaskSpec]) -> list[Task]:
        return self.storage.add_many(specs)

    def get(self, uuid: uuid_lib.UUID | str) -> Task | None:
        return self.storage.get(uuid)

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        *,
        exclude: Collection[str] = (),
        uuids: Collection[uuid_lib.UUID] | None = None,
    ) -> list[Task]:
        return self.storage.claim(worker_id, queues, limit, exclude=exclude, uuids=uuids)

    def finish_many(self, items: Sequence[tuple[Task, Outcome]]) -> list[bool]:
        return self.storage.finish_many(items)

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
