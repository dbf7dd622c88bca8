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

    def run(self, stop: threading.Event) -> None:
        broker = self.broker
        slots = self.slots
        failures = 0
        while not stop.is_set():
            free = slots.wait_for_free(stop)
            self.hand_back_stale()
            if free == 0 or stop.is_set():
                continue
            free = self.claim_limit(free, stop)
            if free == 0:
                continue
            # Burst mode may end only if nothing was held *before* this claim: an outcome
            # stored after it (a retry, say) would otherwise be left behind.
            idle_before = not slots.in_flight
            try:
                if failures:
                    self._reclaim_orphans()
                claimed = broker.claim(self.worker_id, self.queues, free, exclude=self.paused)
                failures = 0
                self.retry.reached()
            except DatabaseError:
                failures += 1
                self.retry.after_failed_claim(failures, stop)
                continue
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
                continue
            if self.burst:
                if idle_before:
                    return
                slots.wait_for_change(stop)
                continue
            broker.wait_for_work(self._idle_for(), stop, self.queues)

    def _reclaim_orphans(self) -> None:
        """After a failed claim, hand back rows the claim may have marked ours anyway
        (it committed, but the reply was lost), so they do not sit in ``process``."""
        self.broker.rescue(self.worker_id, crashed=False, keep=self.slots.held())

    def _idle_for(self) -> float:
        """How long to sleep with nothing ready: until the earliest delayed task is due,
        a poll interval at most (new tasks wake the worker sooner, on PostgreSQL)."""
        try:
            due = self.broker.next_run_after(self.queues, self.paused)
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
            self.broker.release(self.worker_id, [task.uuid for task in tasks])
        except DatabaseError:
            self.retry.failed(
                "Could not hand back %d claimed task(s)", len(tasks), action="hand_back_failed"
            )
            self.slots.put_back(tasks)
            return
        logger.debug(
            "Handed back %d claimed task(s) that had not started: %s",
            len(tasks),
            why,
            extra={"action": "handed_back_unstarted", "count": len(tasks)},
        )
        self.slots.release(task.uuid for task in tasks)
