"""Claiming ahead: a small bounded buffer of claimed rows that wait for a thread.

Why. A claim is one round trip to the database (about a millisecond), and a worker
that claims only for its free threads gets at most ``concurrency`` tasks per trip: with
the default four threads and short tasks, the threads sit idle most of the time,
waiting for the next claim. Claiming a few rows more than there are free threads, and
handing them to the threads as they come free, lets one claim serve many tasks and the
next claim start before the threads run dry.

What keeps it honest:

* **Bounded and adaptive.** At most ``QTASKS["PREFETCH"]`` rows wait here, and only as
  many as the threads are expected to start within :data:`HORIZON` seconds, judged from
  the average duration of the tasks this worker ran: short tasks fill it, one-second
  tasks leave it empty (so a long task never waits here behind others), and with no
  task run yet it stays empty.
* **Handed back when stuck.** A row that has waited :data:`HOLD` seconds without a
  thread (the threads turned out busy with long tasks) goes back to the queue without
  spending an attempt, where any idle worker claims it (see
  :meth:`django_qtasks.storage.DjangoStorage.release`).
* **Held like a running row.** A row waiting here is ``process`` with this worker's id,
  so the heartbeat keeps it, the rescuer takes it if the worker dies, a concurrency
  limit counts it, a cancel ends it without running it, and a graceful shutdown hands
  it back at once instead of running it.

The buffer is not thread-safe by itself: the worker calls it under its own lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable

from django_qtasks.values import Task

#: Claim ahead only what the threads should start within this many seconds.
HORIZON = 0.1
#: A row that waited this many seconds without a thread goes back to the queue.
HOLD = 1.0
#: Weight of the newest duration in the running average.
SMOOTHING = 0.1


class ClaimAhead:
    """The rows a worker claimed beyond its free threads, oldest first."""

    def __init__(self, limit: int, concurrency: int) -> None:
        self.limit = limit
        self.concurrency = concurrency
        self.mean_duration: float | None = None  # of this worker's tasks, in seconds
        self._rows: deque[tuple[Task, float]] = deque()  # (task, claimed at, monotonic)

    def __len__(self) -> int:
        return len(self._rows)

    def record(self, duration: float) -> None:
        """One task ran for ``duration`` seconds."""
        mean = self.mean_duration
        self.mean_duration = duration if mean is None else mean + SMOOTHING * (duration - mean)

    def target(self) -> int:
        """How many rows should wait here, given how long tasks take."""
        mean = self.mean_duration
        if not self.limit or mean is None:
            return 0
        if mean <= 0:
            return self.limit
        return min(self.limit, int(self.concurrency * HORIZON / mean))

    def room(self) -> int:
        """How many more rows to claim ahead now: none until the buffer is down to half
        its target, then enough to fill it (so that claims come in batches)."""
        target = self.target()
        if len(self._rows) > target // 2:
            return 0
        return target - len(self._rows)

    def add(self, tasks: Iterable[Task], now: float) -> None:
        self._rows.extend((task, now) for task in tasks)

    def take(self) -> Task | None:
        """The oldest row, for a thread that came free; None when empty."""
        return self._rows.popleft()[0] if self._rows else None

    def remove(self, uuids: Collection[object]) -> list[Task]:
        """Take the rows of ``uuids`` out (they were cancelled)."""
        found = [task for task, _at in self._rows if task.uuid in uuids]
        if found:
            self._rows = deque((task, at) for task, at in self._rows if task.uuid not in uuids)
        return found

    def has_stale(self, now: float) -> bool:
        return bool(self._rows) and now - self._rows[0][1] >= HOLD

    def stale(self, now: float) -> list[Task]:
        """Take out the rows that waited :data:`HOLD` seconds or more. The tasks turned
        out longer than the average said: it is raised so that the buffer shrinks."""
        found = []
        while self._rows and now - self._rows[0][1] >= HOLD:
            found.append(self._rows.popleft()[0])
        if found:
            self.mean_duration = max(self.mean_duration or 0.0, HOLD)
        return found

    def put_back(self, tasks: list[Task], at: float) -> None:
        """Rows whose hand-back failed wait again, first in line (tried again later)."""
        self._rows.extendleft((task, at) for task in reversed(tasks))

    def clear(self) -> list[Task]:
        """Take every row out (the worker is stopping)."""
        found = [task for task, _at in self._rows]
        self._rows.clear()
        return found
