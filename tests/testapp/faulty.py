"""A Broker that fails on purpose, for worker processes of the tests.

It is a plug-in like any ``QTASKS["BROKER"]``: the worker's claims, outcomes and
scheduled ticks go to the Storage it hands out, its heartbeats to GlobalConfig, except
the calls that ``$QTASKS_TEST_FAULTS`` names, which raise :class:`PluginBug` (a
``RuntimeError``, not a database error), as a buggy plug-in or a bug of ours would.

``QTASKS_TEST_FAULTS`` is JSON: the method's name to the numbers (from 0, counted per
method in this process) of its calls that fail, e.g. ``{"claim": [0, 1]}``.
``claim_after`` fails a claim after Storage committed it (the rows are the worker's,
but it never hears of them).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, cast

from django_qtasks.broker.broker import DjangoBroker
from django_qtasks.settings import QTasksSettings
from django_qtasks.storage.interface import BaseStorage
from django_qtasks.values import Outcome, Task, TaskSpec

FAULTS_ENV = "QTASKS_TEST_FAULTS"


class PluginBug(RuntimeError):
    """What a failing call raises."""


class FaultyStorage:
    """The Storage as the worker sees it through :class:`FaultyBroker`: the calls named
    in ``$QTASKS_TEST_FAULTS`` fail, the rest go to the real one."""

    def __init__(self, storage: BaseStorage, fault: Callable[[str], None]) -> None:
        self._storage = storage
        self._fault = fault

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def claim(self, *args: Any, **kwargs: Any) -> list[Task]:
        self._fault("claim")
        claimed = self._storage.claim(*args, **kwargs)
        self._fault("claim_after")
        return claimed

    def finish_many(self, items: Sequence[tuple[Task, Outcome]]) -> list[bool]:
        self._fault("finish_many")
        return self._storage.finish_many(items)

    def add_scheduled(
        self, schedule: str, tick: dt.datetime, spec: TaskSpec, worker_id: str = ""
    ) -> Task | None:
        self._fault("add_scheduled")
        return self._storage.add_scheduled(schedule, tick, spec, worker_id)


class FaultyBroker(DjangoBroker):
    def __init__(self, settings: QTasksSettings, storage: BaseStorage) -> None:
        super().__init__(settings, storage)
        faults = json.loads(os.environ.get(FAULTS_ENV, "{}"))
        self.faults = {name: set(calls) for name, calls in faults.items()}
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        # The worker reaches Storage through the Broker: hand it the failing one.
        self.storage = cast(BaseStorage, FaultyStorage(storage, self.fault))

    def fault(self, name: str) -> None:
        """Count a call of ``name``; raise if it is one that fails."""
        with self._lock:
            number = self.calls[name]
            self.calls[name] += 1
        if number in self.faults.get(name, ()):
            raise PluginBug(f"{name} call {number} fails on purpose")

    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl: float) -> None:
        self.fault("heartbeat")
        super().heartbeat(worker_id, info, ttl)
