"""What a thread worker holds, shared by its claim loop, its threads and its completer.

One condition guards it all: the claimed tasks not yet stored (``running``), how many a
thread is busy with (``executing``) and the short tasks claimed ahead (:mod:`.prefetch`).
Each part waits on the same condition for the others' changes.
"""

from __future__ import annotations

import threading
import time
import uuid as uuid_lib
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from django_qtasks.worker.prefetch import ClaimAhead

if TYPE_CHECKING:
    from django_qtasks.values import Task
    from django_qtasks.worker.context import TaskContext

CLAIM_LINGER = 0.002  # seconds a busy worker waits for more free threads before claiming
# Outcomes waiting for the completer before claims pause (at least 2 x concurrency): a
# slow database slows the claims instead of growing a backlog, yet the completer can
# store outcomes in batches while the next claim runs.
OUTCOME_BACKLOG = 64


class Slots:
    """The claimed tasks of one worker and its threads' load, under one lock."""

    def __init__(self, concurrency: int, prefetch: int) -> None:
        self.concurrency = concurrency
        self.changed = threading.Condition()
        # Held by this worker until their outcome is stored (cancel relays, shutdown).
        self.running: dict[uuid_lib.UUID, TaskContext | None] = {}
        # Handed to a thread and not yet done executing: what the threads are busy with.
        self.executing = 0
        # Claimed beyond the free threads, waiting for one (in ``running`` too).
        self.ahead = ClaimAhead(prefetch, concurrency)

    @property
    def in_flight(self) -> int:
        with self.changed:
            return len(self.running)

    def holds(self, uuids: Iterable[uuid_lib.UUID]) -> list[uuid_lib.UUID]:
        """Those of ``uuids`` this worker holds."""
        with self.changed:
            return [uuid for uuid in uuids if uuid in self.running]

    def held(self) -> set[uuid_lib.UUID]:
        with self.changed:
            return set(self.running)

    def _free(self) -> int:
        """How many tasks to claim now: one per free thread, plus the buffer's room
        (see :mod:`.prefetch`); none while too many outcomes wait to be stored (a slow
        database must slow the claims, not grow a backlog). Called with the lock held."""
        waiting = len(self.running) - self.executing - len(self.ahead)
        if waiting >= max(2 * self.concurrency, OUTCOME_BACKLOG):
            return 0
        return max(0, self.concurrency - self.executing) + self.ahead.room()

    def wait_for_free(self, stop: threading.Event) -> int:
        """Wait until a task can be claimed; 0 when stale rows must be handed back first."""
        with self.changed:
            while not self._free() and not stop.is_set():
                self.changed.wait(0.5)
                if self.ahead.has_stale(time.monotonic()):
                    return 0  # hand those back first
            if self.executing and self._free() < self.concurrency // 2:
                # Busy: linger a moment so that one claim fills several threads.
                self.changed.wait(CLAIM_LINGER)
            return self._free()

    def take(self, claimed: list[Task]) -> list[Task]:
        """Hold a claim: free threads get theirs now (returned), the rest waits in the
        buffer for the threads to take as they come free."""
        with self.changed:
            now = max(0, self.concurrency - self.executing)
            self.executing += min(now, len(claimed))
            for task in claimed:
                self.running[task.uuid] = None
            self.ahead.add(claimed[now:], time.monotonic())
        return claimed[:now]

    def started(self, task: Task, ctx: TaskContext) -> None:
        with self.changed:
            self.running[task.uuid] = ctx

    def executed(self, duration: float) -> Task | None:
        """A thread finished executing: it takes the next task waiting in the buffer, if
        any (in the same lock: a thread is never idle while a claimed task waits), or is
        free again."""
        with self.changed:
            self.ahead.record(duration)
            following = self.ahead.take()
            if following is None:
                self.executing -= 1
            self.changed.notify_all()
        return following

    def release(self, uuids: Iterable[uuid_lib.UUID]) -> None:
        """Free the tasks' slots: they are finished and stored (or left for the rescuer,
        or handed back). One wake-up for a whole batch, not one per task."""
        with self.changed:
            for uuid in uuids:
                self.running.pop(uuid, None)
            self.changed.notify_all()

    def stale(self) -> list[Task]:
        with self.changed:
            return self.ahead.stale(time.monotonic())

    def put_back(self, tasks: list[Task]) -> None:
        with self.changed:
            self.ahead.put_back(tasks, time.monotonic())

    def clear_ahead(self) -> list[Task]:
        with self.changed:
            return self.ahead.clear()

    def cancel(self, uuids: Collection[uuid_lib.UUID]) -> tuple[list[TaskContext], list[Task]]:
        """The contexts of the running tasks ``uuids`` name, and the ones of them claimed
        ahead, taken out of the buffer."""
        with self.changed:
            contexts = [self.running.get(uuid) for uuid in uuids]
            unstarted = self.ahead.remove(uuids)
        return [ctx for ctx in contexts if ctx is not None], unstarted

    def wait_for_change(self, stop: threading.Event) -> None:
        with self.changed:
            if self.running and not stop.is_set():
                self.changed.wait(0.5)

    def drain(self, grace: float, force: threading.Event) -> bool:
        """Wait until nothing is held, up to ``grace`` seconds or until ``force``."""
        deadline = time.monotonic() + grace
        with self.changed:
            while self.running and not force.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.changed.wait(min(remaining, 0.1))
            return not self.running
