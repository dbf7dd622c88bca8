"""The queue's health at a glance: queues, workers and recent failures, as dataclasses.

``qtasks_status`` prints it, the metrics view exports it, and the admin dashboard
reads the same queries (:func:`~django_qtasks.dashboard.queue_stats` and
:func:`~django_qtasks.dashboard.workers`). Every read is bounded and goes through an
index: the active rows' partial indexes for the queues, GlobalConfig for the workers,
and a time range of the ``finished_at`` partial index (``qtasks_finished_idx``) for
the failure rate, so it stays cheap with millions of finished rows in the table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from django.utils import timezone

from django_qtasks.contrib.dashboard import (
    SCAN_CAP,
    UNKNOWN_STATUSES_CAP,
    queue_stats,
    workers,
)
from django_qtasks.settings import get_settings
from django_qtasks.storage import reads

SCHEMA_VERSION = 1
"""The version of :meth:`Status.as_dict` (``qtasks_status --json``); it changes only
when a field is renamed or removed, never when one is added."""

DEFAULT_WINDOW = 900.0
"""Seconds of finished tasks the failure rate looks at: the last 15 minutes."""


@dataclass(frozen=True)
class QueueStatus:
    """A queue with waiting or running tasks, or a paused one."""

    name: str
    waiting: int  # new or retry, due or not
    ready: int  # waiting and due now
    running: int
    oldest_ready_age: float | None  # seconds the oldest due task has waited; None: none
    paused: bool


@dataclass(frozen=True)
class WorkerStatus:
    """A worker's last heartbeat; a dead one shows until its row is forgotten."""

    id: str
    host: str
    pid: int | None
    queues: list[str] | None  # None: every queue
    threads: int | None
    running: int | None
    heartbeat_age: float  # seconds since the last heartbeat
    alive: bool  # the heartbeat has not expired

    def serves(self, queue: str) -> bool:
        return self.alive and (self.queues is None or queue in self.queues)


@dataclass(frozen=True)
class RecentOutcomes:
    """Tasks that finished in the last ``window`` seconds."""

    window: float
    finished: int
    failed: int  # ended ``error``
    cancelled: int

    @property
    def failure_rate(self) -> float | None:
        """Failed / finished (cancelled tasks count as finished, not failed)."""
        return self.failed / self.finished if self.finished else None


@dataclass(frozen=True)
class Status:
    """One reading of the queue's health."""

    time: dt.datetime
    queues: list[QueueStatus]
    queues_capped: bool  # more than SCAN_CAP active rows: the counts are lower bounds
    workers: list[WorkerStatus]
    recent: RecentOutcomes
    # Statuses that are none of the seven -> rows (more than SCAN_CAP: SCAN_CAP + 1).
    unknown_statuses: dict[str, int] = field(default_factory=dict)

    @property
    def live_workers(self) -> list[WorkerStatus]:
        return [worker for worker in self.workers if worker.alive]

    def problems(
        self, queues: Sequence[str] | None = None, max_age: float | None = None
    ) -> list[str]:
        """What ``qtasks_status --check`` fails on: a queue that no live worker serves
        (every queue named in ``queues``; otherwise every queue with tasks ready to
        run), a queue whose oldest ready task has waited more than ``max_age``
        seconds (paused queues wait on purpose and are left out of that one), and rows
        in a status that is none of the seven, which wait for a person forever."""
        by_name = {queue.name: queue for queue in self.queues}
        names = list(queues) if queues else [q.name for q in self.queues if q.ready]
        found = []
        for name in names:
            queue = by_name.get(name)
            ready = queue.ready if queue else 0
            if not any(worker.serves(name) for worker in self.workers):
                found.append(f"queue {name!r}: no live worker serves it ({ready} ready)")
            age = queue.oldest_ready_age if queue and not queue.paused else None
            if max_age is not None and age is not None and age > max_age:
                found.append(
                    f"queue {name!r}: the oldest ready task has waited {age:.0f} s "
                    f"(more than {max_age:g} s)"
                )
        for status, rows in self.unknown_statuses.items():
            many = f"more than {SCAN_CAP:,}" if rows > SCAN_CAP else str(rows)
            found.append(
                f"status {status!r}: {many} task row(s) in a status no worker runs or "
                "prunes; fix or delete them in the admin"
            )
        return found

    def as_dict(self, problems: list[str] | None = None) -> dict[str, Any]:
        """The JSON form (``qtasks_status --json``; docs/operations.md has the schema)."""
        recent = asdict(self.recent)
        recent["failure_rate"] = self.recent.failure_rate
        return {
            "version": SCHEMA_VERSION,
            "time": self.time.isoformat(),
            "queues": [asdict(queue) for queue in self.queues],
            "queues_capped": self.queues_capped,
            "workers": [asdict(worker) for worker in self.workers],
            "recent": recent,
            "unknown_statuses": self.unknown_statuses,
            "problems": self.problems() if problems is None else problems,
        }


def _seconds(delta: dt.timedelta | None) -> float | None:
    return None if delta is None else round(delta.total_seconds(), 3)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def queue_status(now: dt.datetime | None = None) -> tuple[list[QueueStatus], bool]:
    """Queues with waiting or running tasks, plus paused ones; and whether the counts
    were capped at :data:`~django_qtasks.dashboard.SCAN_CAP` active rows."""
    rows, capped = queue_stats(now)
    return [
        QueueStatus(
            name=row.name,
            waiting=row.waiting,
            ready=row.ready,
            running=row.running,
            oldest_ready_age=_seconds(row.oldest_age),
            paused=row.paused,
        )
        for row in rows
    ], capped


def worker_status(now: dt.datetime | None = None) -> list[WorkerStatus]:
    """Every worker heartbeat in GlobalConfig, newest first, expired ones included."""
    return [
        WorkerStatus(
            id=row.worker_id,
            host=str(row.host),
            pid=_int(row.info.get("pid")),
            queues=list(row.info["queues"]) if row.info.get("queues") else None,
            threads=_int(row.info.get("concurrency")),
            running=_int(row.info.get("running")),
            heartbeat_age=round(row.age.total_seconds(), 3),
            alive=row.alive,
        )
        for row in workers(now)
    ]


def recent_outcomes(
    window: float = DEFAULT_WINDOW, now: dt.datetime | None = None
) -> RecentOutcomes:
    """Finished, failed and cancelled tasks of the last ``window`` seconds: one range
    read of the ``finished_at`` partial index, which holds the status too (PostgreSQL
    answers it from the index alone)."""
    if window <= 0:
        raise ValueError(f"window must be more than 0 seconds, got {window!r}")
    since = (now or timezone.now()) - dt.timedelta(seconds=window)
    counts = reads.outcomes_since(get_settings().database, since)
    return RecentOutcomes(
        window=window,
        finished=counts["finished"],
        failed=counts["failed"],
        cancelled=counts["cancelled"],
    )


def read_status(window: float = DEFAULT_WINDOW, now: dt.datetime | None = None) -> Status:
    """Queues, workers and the last ``window`` seconds' outcomes, read now."""
    now = now or timezone.now()
    queues, capped = queue_status(now)
    return Status(
        time=now,
        queues=queues,
        queues_capped=capped,
        workers=worker_status(now),
        recent=recent_outcomes(window, now),
        unknown_statuses=reads.unknown_statuses(
            get_settings().database, SCAN_CAP, UNKNOWN_STATUSES_CAP
        ),
    )


__all__ = [
    "SCAN_CAP",
    "QueueStatus",
    "RecentOutcomes",
    "Status",
    "WorkerStatus",
    "queue_status",
    "read_status",
    "recent_outcomes",
    "worker_status",
]
