"""The Storage interface: what every Storage implements, and the names it shares.

``BaseStorage`` is the contract between the queue and its database (the Broker and
the worker side see nothing else); ``QTASKS["STORAGE"]`` may name any subclass. The
GlobalConfig names of the workers' heartbeats and paused queues live here, beside it,
because the storage's rescue and the broker, admin and dashboard all read them; so does
the NOTIFY channel, which Storage sends on and the Broker listens to.
"""

from __future__ import annotations

import datetime as dt
import uuid as uuid_lib
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from django_qtasks.global_config.global_config import BaseGlobalConfig
from django_qtasks.models import (
    FINISHED_STATUSES,
)
from django_qtasks.settings import QTasksSettings
from django_qtasks.signals import component_started, component_stopped
from django_qtasks.values import Outcome, Task, TaskSpec

WORKERS = "workers"  # the GlobalConfig name under which workers keep their heartbeats
QUEUES = "queues"  # ... and under which paused queues are flagged
# PostgreSQL: the channel Storage's statements NOTIFY when tasks become ready (the enqueue
# trigger of migration 0004, flows releasing a stage); the Broker's listener LISTENs on it.
CHANNEL = "django_qtasks"


@dataclass(frozen=True)
class LastRun:
    """The newest enqueued tick of a schedule."""

    tick: dt.datetime
    task_uuid: uuid_lib.UUID | None
    enqueued_at: dt.datetime


class BaseStorage(ABC):
    """The interface every Storage implements. It owns (and starts) GlobalConfig."""

    component_name = "storage"

    def __init__(self, settings: QTasksSettings, global_config: BaseGlobalConfig) -> None:
        self.settings = settings
        self.global_config = global_config

    def start(self) -> None:
        component_started.send(sender=type(self), component=self, name=self.component_name)
        self.global_config.start()

    def stop(self) -> None:
        self.global_config.stop()
        component_stopped.send(sender=type(self), component=self, name=self.component_name)

    @abstractmethod
    def add(self, spec: TaskSpec) -> tuple[Task, bool]:
        """Store a new task on the caller's connection (inside its transaction, if any).

        Returns the task and whether it was created: with a ``unique_key`` already held
        by a waiting or running task of the same name, that task comes back instead."""

    @abstractmethod
    def add_many(self, specs: Sequence[TaskSpec]) -> list[Task]:
        """Store many new tasks at once, all or none (one transaction)."""

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
        """Mark up to ``limit`` ready tasks ``process`` for this worker and return them,
        in claim order (higher priority first, then older ``run_after``). ``queues``
        limits the queues (``None``: all); ``exclude`` names paused ones.

        With ``uuids``, only those tasks are claimed, if they are waiting, whatever their
        ``run_after``: the in-process runner of :mod:`django_qtasks.testing` runs one
        given task, and its retries at once.

        A task with ``max_concurrency`` is returned only if running it keeps its group
        within the limit, counting every worker (docs/concurrency-limits.md): every
        caller runs what this returns, so the limit is enforced here."""

    def next_run_after(
        self, queues: Sequence[str] | None, exclude: Collection[str] = ()
    ) -> dt.datetime | None:
        """When the earliest delayed task of these queues becomes ready (``None``: none
        is waiting), so an idle worker can sleep until then rather than a whole poll."""
        return None

    @abstractmethod
    def requeue(self, uuid: uuid_lib.UUID | str) -> Task | None:
        """Put a failed or cancelled task back to waiting, allowing one more attempt."""

    @abstractmethod
    def finish_many(self, items: Sequence[tuple[Task, Outcome]]) -> list[bool]:
        """Store how attempts ended, all in one transaction; for each, False if the task
        was no longer this worker's (rescued or cancelled meanwhile): nothing changes then.
        """

    def finish(self, task: Task, outcome: Outcome) -> bool:
        return self.finish_many([(task, outcome)])[0]

    @abstractmethod
    def set_progress(self, uuid: uuid_lib.UUID, progress: dict[str, Any]) -> None: ...

    @abstractmethod
    def rescue(
        self,
        worker_id: str | None = None,
        *,
        crashed: bool = True,
        keep: Collection[uuid_lib.UUID] = (),
    ) -> list[tuple[uuid_lib.UUID, str]]:
        """Put running tasks whose worker is gone back to ``retry``, recording why;
        returns ``(uuid, new status)`` pairs. Safe to run from many processes at once.

        Without ``worker_id``: every task whose worker has no live heartbeat. With it:
        that worker's tasks (but those in ``keep``), whatever its heartbeat; ``crashed``
        says whether the worker died or left (the reason recorded).
        A lost run is the worker's loss, not the task's: it keeps its attempt (the
        user's retries stay whole) and counts one rescue instead. A task already
        rescued ``QTASKS["MAX_RESCUES"]`` times ends ``error``, so a task that keeps
        killing its worker stops.
        """

    @abstractmethod
    def rescue_run(self, task: Task, why: str, *, delay: float = 0.0) -> str | None:
        """Rescue one run of ``task`` that its worker lost while the task itself did
        nothing wrong (the database cut the worker's connection), as :meth:`rescue`
        does, due in ``delay`` seconds; returns the new status (``retry``, or ``error``
        past ``MAX_RESCUES``), or None if the row was no longer this worker's."""

    @abstractmethod
    def release(self, worker_id: str, uuids: Collection[uuid_lib.UUID]) -> int:
        """Put tasks that ``worker_id`` claimed but never started back to waiting, as
        they were before the claim (their attempt unspent, their place in claim order
        kept), for any worker to claim; returns how many. Rows no longer held by that
        worker are left alone."""

    @abstractmethod
    def cancel(self, uuid: uuid_lib.UUID | str, reason: str = "") -> Task | None:
        """Cancel a waiting task at once; ask a running one to stop (``cancel_requested``)."""

    @abstractmethod
    def cancel_requests(self, worker_id: str) -> set[uuid_lib.UUID]:
        """The running tasks of this worker that someone asked to cancel."""

    # -- schedules and retention (not abstract: a Storage without them has no schedules
    # and no pruning; see docs/periodic-tasks.md and docs/retention.md) -----------------
    def add_scheduled(
        self, schedule: str, tick: dt.datetime, spec: TaskSpec, worker_id: str = ""
    ) -> Task | None:
        """Store the task of one tick of a schedule, unless that tick was enqueued before
        (by any worker, at any time): then store nothing and return ``None``. The
        database decides, in one transaction, however many workers try at once."""
        raise NotImplementedError(f"{type(self).__name__} does not support schedules")

    def last_schedule_runs(self, names: Collection[str]) -> dict[str, LastRun]:
        """The newest enqueued tick of each of these schedules that has one."""
        raise NotImplementedError(f"{type(self).__name__} does not support schedules")

    def prune(
        self,
        before: dt.datetime,
        statuses: Collection[str] = FINISHED_STATUSES,
        limit: int = 1000,
    ) -> int:
        """Delete at most ``limit`` finished tasks of ``statuses`` that finished before
        ``before``, in one short statement; return how many. Never a waiting or running
        task. Call it again until it returns less than ``limit``."""
        raise NotImplementedError(f"{type(self).__name__} does not support pruning")

    def count_prunable(
        self, before: dt.datetime, statuses: Collection[str] = FINISHED_STATUSES
    ) -> int:
        """How many tasks :meth:`prune` would delete, all batches together."""
        raise NotImplementedError(f"{type(self).__name__} does not support pruning")

    def prune_schedule_runs(self, before: dt.datetime, limit: int = 1000) -> int:
        """Delete at most ``limit`` schedule runs whose tick is before ``before``, except
        each schedule's newest (its "last run", which decides the catch-up)."""
        raise NotImplementedError(f"{type(self).__name__} does not support pruning")

    # -- flows (not abstract: a Storage without them has no chains and groups; see
    # docs/workflows.md) ------------------------------------------------------------------
    def add_flow(self, specs: Sequence[TaskSpec]) -> list[Task]:
        """Store every task of a chain or group, all or none, as the specs say: their
        ``flow_*`` places, and ``blocked`` for those that wait for an earlier stage.
        ``finish_many`` then releases each stage when the one before it succeeded."""
        raise NotImplementedError(f"{type(self).__name__} does not support flows")
