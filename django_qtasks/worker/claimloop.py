"""The claim loop of a thread worker: claims as many tasks as it can run, hands them to
the threads, and waits for work through the Broker.

It claims one task per free thread plus a small bounded buffer of short tasks claimed
ahead (:mod:`.prefetch`). Rows that wait too long in that buffer go back to the queue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from django.db import DatabaseError
from django.utils import timezone

from django_qtasks.worker.faults import FailureStreak

if TYPE_CHECKING:
    from django_qtasks.broker.broker import BaseBroker
    from django_qtasks.values import Task
    from django_qtasks.worker.dbretry import DatabaseRetry
    from django_qtasks.worker.slots import Slots

logger = logging.getLogger("django_qtasks.worker")

AFTER_PARTIAL_CLAIM = 0.02  # seconds to wait for an enqueue after a claim came back short


class ClaimLoop:
    """Claims for one worker until stopped (or, in burst mode, until nothing is left).

    ``claim_limit(free, stop)`` caps a claim and ``on_claimed(tasks)`` sees each
    non-empty one (the worker's hooks); ``dispatch`` hands a task to a free thread."""

    def __init__(
        self,
        *,
        broker: BaseBroker,
        slots: Slots,
        retry: DatabaseRetry,
        worker_id: str,
        queues: Sequence[str] | None,
        burst: bool,
        poll_interval: float,
        dispatch: Callable[[Task], None],
        claim_limit: Callable[[int, threading.Event], int],
        on_claimed: Callable[[list[Task]], None],
    ) -> None:
        self.broker = broker
        self.slots = slots
        self.retry = retry
        self.worker_id = worker_id
        self.queues = queues
        self.burst = burst
        self.poll_interval = poll_interval
        self.dispatch = dispatch
        self.claim_limit = claim_limit
        self.on_claimed = on_claimed
        # Set from the heartbeat: queues paused by an operator are not claimed from.
        self.paused: frozenset[str] = frozenset()
        self.faults = FailureStreak("The claim loop", logger, action="claim_loop_failed")
        self._db_failures = 0  # failed claims in a row (database errors)
        self._orphans = False  # a round failed: its claim may have marked rows ours

    def run(self, stop: threading.Event) -> None:
        """Claim rounds until stopped. A round that fails with an error that is not the
        database's (a bug, a plug-in's) is logged once per streak (:mod:`.faults`), and
        the next one comes after a short pause; its claim may have marked rows this
        worker's without its knowing, so those are handed back first."""
        while not stop.is_set():
            try:
                if self._round(stop):
                    return
            except Exception:
                self._orphans = True
                stop.wait(self.faults.failed())
            else:
                self.faults.succeeded()

    def _round(self, stop: threading.Event) -> bool:
        """One claim and its hand-out, then a wait if the queue ran dry; True when a
        burst is over."""
        broker = self.broker
        slots = self.slots
        free = slots.wait_for_free(stop)
        self.hand_back_stale()
        if free == 0 or stop.is_set():
            return False
        free = self.claim_limit(free, stop)
        if free == 0:
            return False
        # Burst mode may end only if nothing was held *before* this claim: an outcome
        # stored after it (a retry, say) would otherwise be left behind.
        idle_before = not slots.in_flight
        try:
            if self._db_failures or self._orphans:
                self._reclaim_orphans()
                self._orphans = False
            claimed = broker.storage.claim(self.worker_id, self.queues, free, exclude=self.paused)
            self._db_failures = 0
            self.retry.reached()
        except DatabaseError:
            self._db_failures += 1
            self.retry.after_failed_claim(self._db_failures, stop)
            return False
        if claimed:
            self.on_claimed(claimed)
            for task in slots.take(claimed):
                self.dispatch(task)
            if len(claimed) < free and not self.burst:
                # The claim found fewer ready tasks than free threads: the queue is
                # empty for now. Wait for the next enqueue (at once through LISTEN)
                # instead of claiming again at once: this thread then blocks right
                # away, so the threads just handed a task get the GIL without
                # waiting for it, and an idle worker sends one claim per wake-up,
                # not two. What no enqueue announces (a retry due now, a rescue) is
                # found by the claim after this short wait.
                broker.wait_for_work(AFTER_PARTIAL_CLAIM, stop, self.queues)
            return False
        if self.burst:
            if idle_before:
                return True
            slots.wait_for_change(stop)
            return False
        broker.wait_for_work(self._idle_for(), stop, self.queues)
        return False

    def _reclaim_orphans(self) -> None:
        """After a failed claim, hand back rows the claim may have marked ours anyway
        (it committed, but the reply was lost), so they do not sit in ``process``."""
        self.broker.storage.rescue(self.worker_id, crashed=False, keep=self.slots.held())

    def _idle_for(self) -> float:
        """How long to sleep with nothing ready: until the earliest delayed task is due,
        a poll interval at most (new tasks wake the worker sooner, on PostgreSQL)."""
        try:
            due = self.broker.storage.next_run_after(self.queues, self.paused)
        except DatabaseError:
            self.retry.failed("Reading when the next task is due failed", action="next_due_failed")
            return self.poll_interval
        if due is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, (due - timezone.now()).total_seconds()))

    def hand_back_stale(self) -> None:
        """Rows that waited in the buffer too long go back to the queue (the threads are
        busy with longer tasks than expected), for an idle worker to take."""
        stale = self.slots.stale()
        if stale:
            self.hand_back(stale, "waited too long for a thread")

    def hand_back(self, tasks: list[Task], why: str) -> None:
        """Release claimed tasks that never started; if the database is away, they wait
        in the buffer again (a shutdown's are left to the worker's rescue as it leaves)."""
        try:
            self.broker.storage.release(self.worker_id, [task.uuid for task in tasks])
        except DatabaseError:
            self.retry.failed(
                "Could not hand back %d claimed task(s)", len(tasks), action="hand_back_failed"
            )
            self.slots.put_back(tasks)
            return
        except Exception:
            self.slots.put_back(tasks)  # not lost: held, and handed back as the worker leaves
            raise
        logger.debug(
            "Handed back %d claimed task(s) that had not started: %s",
            len(tasks),
            why,
            extra={"action": "handed_back_unstarted", "count": len(tasks)},
        )
        self.slots.release(task.uuid for task in tasks)
