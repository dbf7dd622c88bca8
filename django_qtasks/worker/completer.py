"""The completer: stores the outcomes of a thread worker's tasks, in batches.

Threads hand their outcomes over and take the next task at once; one thread stores
them through the Broker. Whatever finished while the last batch was being written
goes in the next one, in one transaction: idle, a batch is one task, so batching adds
no wait; busy, it saves a commit per task.
"""

from __future__ import annotations

import logging
import queue as queue_lib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from django.db import DatabaseError, connections
from django.utils import timezone

from django_qtasks import signals
from django_qtasks.log import task_fields
from django_qtasks.models import TaskStatus
from django_qtasks.values import Outcome
from django_qtasks.worker.faults import FailureStreak

if TYPE_CHECKING:
    from django_qtasks.broker.broker import BaseBroker
    from django_qtasks.global_config.counters import TaskCounters
    from django_qtasks.values import Task
    from django_qtasks.worker.dbretry import DatabaseRetry
    from django_qtasks.worker.slots import Slots

logger = logging.getLogger("django_qtasks.worker")

MAX_COMPLETION_BATCH = 500
# Tries of a batch whose storing fails with an error that is not the database's (with
# the pauses of :mod:`.faults` between them) before each outcome is tried alone.
STORE_TRIES = 3


class Done(NamedTuple):
    """A task's outcome on its way to the database. ``registered`` is False for a row
    naming a task this worker does not know: no code of it ran, so no signal is sent."""

    task: Task
    outcome: Outcome
    duration: float
    registered: bool = True


class Completer:
    """One thread that stores outcomes, frees their slots and tells the world.

    ``sender`` is the class the ``task_finished`` signal is sent from (the app's);
    ``on_task_end`` is called for each task once its outcome is stored."""

    def __init__(
        self,
        *,
        broker: BaseBroker,
        slots: Slots,
        retry: DatabaseRetry,
        counters: TaskCounters,
        sender: type,
        on_task_end: Callable[[Task], None],
    ) -> None:
        self.broker = broker
        self.slots = slots
        self.retry = retry
        self.counters = counters
        self.sender = sender
        self.on_task_end = on_task_end
        # SimpleQueue: a C queue without a Condition; the hand-offs are on the hot path.
        self._queue: queue_lib.SimpleQueue[Done | None] = queue_lib.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="qtasks-completer", daemon=True)
        self.faults = FailureStreak("Storing outcomes", logger, action="completer_failed")

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Store what was handed over, then end (waiting ``timeout`` seconds at most)."""
        self._queue.put(None)
        self._thread.join(timeout=timeout)

    def put(self, done: Done) -> None:
        self._queue.put(done)

    def _main(self) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                while len(batch) < MAX_COMPLETION_BATCH:
                    try:
                        more = self._queue.get_nowait()
                    except queue_lib.Empty:
                        break
                    if more is None:
                        self._queue.put(None)  # stop after this batch
                        break
                    batch.append(more)
                try:
                    self.store(batch)
                except Exception:  # after the write (a hook, a log handler): free the slots
                    self.faults.failed()
                    self.slots.release(done.task.uuid for done in batch)
        finally:
            connections.close_all()

    def store(self, batch: list[Done]) -> None:
        """Store a batch of outcomes, then free their slots and tell the world."""
        stored = self._write(batch)
        for done in batch:
            self.on_task_end(done.task)
        self.slots.release(done.task.uuid for done in batch)
        for done, ok in zip(batch, stored, strict=True):
            task, outcome = done.task, done.outcome
            if not ok:
                continue
            self.counters.record(task, outcome.status, done.duration)
            if done.registered:
                signals.send_from_worker(
                    signals.task_finished, self.sender, task=task, outcome=outcome
                )
            if outcome.lost:
                continue  # the rescue logged it (storage: "Task ... rescued: ...")
            level = logging.WARNING if outcome.status == TaskStatus.ERROR else logging.INFO
            if not logger.isEnabledFor(level):  # the record's extra costs more than the rest
                continue
            logger.log(
                level,
                *_finished_line(done),
                extra=task_fields(
                    task,
                    action="task_finished",
                    status=outcome.status,
                    duration=done.duration,
                    **({"error": outcome.error} if outcome.error else {}),
                ),
            )

    def _write(self, batch: list[Done], tries: int = STORE_TRIES) -> list[bool]:
        """``finish_many``, riding out a dropped connection or a database restart.

        It only changes rows this worker still holds, so a retry after a lost reply
        cannot overwrite anything. If the database stays away past the heartbeat
        timeout, the tasks are rescued and run again elsewhere (at-least-once). An
        outcome the database refuses for good (say, a NUL character in a result) is
        stored as an ``error`` that says so, instead of being retried for nothing.

        An error that is not the database's (a bug, a plug-in's) is logged once per
        streak (:mod:`.faults`) and the batch tried again after a short pause, up to
        ``tries`` times; then each outcome alone, and the run of one that still
        cannot be stored is handed back (rescued: it runs again, its attempt unspent).
        """
        uuids = [str(done.task.uuid) for done in batch]
        try:
            stored = self.retry.write(lambda: self._persist(batch), uuids)
        except DatabaseError as exc:
            if len(batch) > 1:  # find the one the database refuses
                return [ok for done in batch for ok in self._write([done])]
            done = batch[0]
            if done.outcome.error == _unstorable(exc)["error"]:
                logger.exception(
                    "Task %s: even its error could not be stored",
                    done.task.uuid,
                    extra=task_fields(done.task, action="finish_refused"),
                )
                return [False]
            logger.error(
                "Task %s: its outcome was refused by the database: %s",
                done.task.uuid,
                exc,
                extra=task_fields(done.task, action="finish_refused"),
            )
            failed = Outcome(status=TaskStatus.ERROR, **_unstorable(exc))
            return self._write([Done(done.task, failed, done.duration)])
        except Exception:
            delay = self.faults.failed(task_uuids=uuids)
            if tries > 1:
                time.sleep(delay)
                return self._write(batch, tries - 1)
            if len(batch) > 1:  # a bad one fails alone
                return [ok for done in batch for ok in self._write([done], tries=1)]
            self._hand_back(batch[0])
            return [False]
        self.faults.succeeded()
        return [False] * len(batch) if stored is None else stored

    def _hand_back(self, done: Done) -> None:
        """The outcome cannot be stored: the run goes back to the queue instead (a
        rescue, so a task whose outcome never stores stops after ``MAX_RESCUES``)."""
        why = "its worker could not store its outcome"
        try:
            handed = self.broker.storage.rescue_run(done.task, why) is not None
        except Exception:
            logger.exception(
                "Task %s: neither its outcome nor its hand-back could be stored; it is "
                "rescued once this worker has left",
                done.task.uuid,
                extra=task_fields(done.task, action="finish_abandoned"),
            )
            return
        if handed:
            logger.warning(
                "Task %s: its outcome (%s) could not be stored; the run was handed back",
                done.task.uuid,
                done.outcome.status,
                extra=task_fields(done.task, action="finish_handed_back"),
            )

    def _persist(self, batch: list[Done]) -> list[bool]:
        """Store the outcomes; a run the database cut short is rescued instead (its
        attempt unspent). For each, whether the row was still this worker's."""
        broker = self.broker
        if not any(done.outcome.lost for done in batch):  # the common case: one statement
            return broker.storage.finish_many([(done.task, done.outcome) for done in batch])
        finished = iter(
            broker.storage.finish_many([(d.task, d.outcome) for d in batch if not d.outcome.lost])
        )
        stored = []
        for done in batch:
            if not done.outcome.lost:
                stored.append(next(finished))
                continue
            why = f"the database cut its worker's connection ({exception_text(done.outcome)})"
            delay = _seconds_until(done.outcome.run_after)
            stored.append(broker.storage.rescue_run(done.task, why, delay=delay) is not None)
        return stored


def exception_text(outcome: Outcome, limit: int = 200) -> str:
    """``Type: message`` of a failed attempt, on one line: a log line or a history
    entry names the cause (psycopg's messages span lines, a user's may be long)."""
    error = outcome.error or {}
    name = str(error.get("type", "")).rpartition(".")[2]
    text = str(error.get("message") or "").strip().split("\n", 1)[0]
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"{name}: {text}" if text else name


def _seconds_until(when: Any) -> float:
    return 0.0 if when is None else max(0.0, (when - timezone.now()).total_seconds())


def _finished_line(done: Done) -> tuple[Any, ...]:
    """The text line of a finished attempt (format and arguments): a failure names the
    exception, and a retry says when the next try is due."""
    task, outcome = done.task, done.outcome
    if outcome.status not in (TaskStatus.RETRY, TaskStatus.ERROR) or outcome.error is None:
        return "Task %s %s: %s in %.3f s", task.task_name, task.uuid, outcome.status, done.duration
    head = "Task %s %s: attempt %d of %d failed after %.3f s (%s)"
    args = (task.task_name, task.uuid, task.attempt, task.max_retries + 1, done.duration,
            exception_text(outcome))  # fmt: skip
    if outcome.status == TaskStatus.ERROR:
        return (head + "; it ends in error", *args)
    return (head + "; next try in %.1f s", *args, _seconds_until(outcome.run_after))


def _unstorable(exc: BaseException) -> dict[str, Any]:
    message = f"The task's outcome could not be stored: {exc}"
    return {
        "error": {"type": "django_qtasks.exceptions.OutcomeNotStored", "message": message},
        "traceback": message,
    }
