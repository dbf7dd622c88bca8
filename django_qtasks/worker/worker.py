"""Worker: runs claimed tasks concurrently and stores how they ended.

The main loop claims as many tasks as there are free threads plus a small bounded
buffer of short tasks claimed ahead (:mod:`.prefetch`), hands them to the threads,
and waits for work through the Broker. Each
thread keeps its own database connection for its life and closes it at the end.
A :class:`~django_qtasks.heartbeat.Heartbeat` keeps the worker visibly alive and a
:class:`~django_qtasks.timelimit.Timekeeper` enforces ``max_time`` on sync tasks.
"""

from __future__ import annotations

import logging
import os
import queue as queue_lib
import socket
import threading
import time
import uuid as uuid_lib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, NamedTuple

from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.utils import timezone

from django_qtasks import signals
from django_qtasks.api.task import Outcome, Task
from django_qtasks.exceptions import TaskNotRegistered, describe_exception
from django_qtasks.global_config.counters import TaskCounters
from django_qtasks.log import task_fields
from django_qtasks.models import TaskStatus
from django_qtasks.settings import import_component
from django_qtasks.storage.db import close_if_broken, ensure_usable, reset_connection
from django_qtasks.worker.context import TaskContext
from django_qtasks.worker.executor import BaseTaskExecutor
from django_qtasks.worker.heartbeat import Heartbeat
from django_qtasks.worker.prefetch import ClaimAhead
from django_qtasks.worker.scheduler import Scheduler
from django_qtasks.worker.timelimit import Timekeeper

if TYPE_CHECKING:
    from django_qtasks.api.queue_tasks import BaseQueueTasks
    from django_qtasks.api.task import BaseTask

logger = logging.getLogger("django_qtasks.worker")

MAX_DB_BACKOFF = 30.0
MAX_COMPLETION_BATCH = 500
CLAIM_LINGER = 0.002  # seconds a busy worker waits for more free threads before claiming
AFTER_PARTIAL_CLAIM = 0.02  # seconds to wait for an enqueue after a claim came back short
IDLE_PING_AFTER = 1.0  # seconds a thread's connection may idle before a task pings it
# Outcomes waiting for the completer before claims pause (at least 2 x concurrency): a
# slow database slows the claims instead of growing a backlog, yet the completer can
# store outcomes in batches while the next claim runs.
OUTCOME_BACKLOG = 64


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid_lib.uuid4().hex[:6]}"


class BaseWorker(ABC):
    """The interface every Worker implements."""

    component_name = "worker"

    def __init__(
        self,
        app: BaseQueueTasks,
        *,
        queues: list[str] | None,
        concurrency: int,
        burst: bool = False,
        poll_interval: float = 1.0,
        worker_id: str | None = None,
        heartbeat_file: str | None = None,
    ) -> None:
        self.app = app
        self.queues = queues
        self.concurrency = concurrency
        self.burst = burst
        self.poll_interval = poll_interval
        self.worker_id = worker_id or make_worker_id()
        # Touched on each heartbeat that reached the database (a liveness probe's file).
        self.heartbeat_file = heartbeat_file or app.settings.heartbeat_file

    def start(self) -> None:
        signals.component_started.send(sender=type(self), component=self, name=self.component_name)

    def stop(self) -> None:
        signals.component_stopped.send(sender=type(self), component=self, name=self.component_name)

    @abstractmethod
    def run(self, stop: threading.Event, force: threading.Event, grace: float) -> bool:
        """Claim and run tasks until ``stop`` is set (in burst mode: until nothing is left),
        then give running tasks ``grace`` seconds (cut short by ``force``) and hand back
        what did not finish. True when every claimed task finished here."""


class ThreadWorker(BaseWorker):
    """N threads in this process; async tasks run on an event loop inside their thread."""

    def __init__(self, app: BaseQueueTasks, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        # SimpleQueue: a C queue without a Condition; the hand-offs are on the hot path.
        self._inbox: queue_lib.SimpleQueue[Task | None] = queue_lib.SimpleQueue()
        self._completed: queue_lib.SimpleQueue[_Done | None] = queue_lib.SimpleQueue()
        self._completer = threading.Thread(
            target=self._completer_main, name="qtasks-completer", daemon=True
        )
        self._threads: list[threading.Thread] = []
        # Held by this worker until their outcome is stored (cancel relays, shutdown).
        self._running: dict[uuid_lib.UUID, TaskContext | None] = {}
        # Handed to a thread and not yet done executing: what the threads are busy with.
        self._executing = 0
        self._changed = threading.Condition()
        settings = app.settings
        # Claimed beyond the free threads, waiting for one (in _running too).
        self.ahead = ClaimAhead(settings.prefetch, self.concurrency)
        # On stop, rows still in the buffer go back to the queue, unless this is set (a
        # pool child retiring after its max tasks runs what it took).
        self.run_ahead_on_stop = False
        self.default_executor: BaseTaskExecutor = import_component(
            settings, "executor", BaseTaskExecutor
        )(settings)
        self._executors: dict[type, BaseTaskExecutor] = {}
        self.timekeeper = Timekeeper()
        self.heartbeat: Heartbeat | None = None
        self.paused: frozenset[str] = frozenset()
        # Outcomes counted for the metrics view, flushed to GlobalConfig on each heartbeat.
        self.counters = TaskCounters()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        for number in range(self.concurrency):
            thread = threading.Thread(
                target=self._thread_main, name=f"qtasks-worker-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self.timekeeper.start()
        self._completer.start()
        super().start()

    def stop(self) -> None:
        for _ in self._threads:
            self._inbox.put(None)
        deadline = time.monotonic() + 0.5  # threads still busy after a forced stop stay behind
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
        self._completed.put(None)
        self._completer.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        self.timekeeper.stop()
        connections.close_all()
        super().stop()

    @property
    def in_flight(self) -> int:
        with self._changed:
            return len(self._running)

    # -- main loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event, force: threading.Event, grace: float) -> bool:
        broker = self.app.broker
        self.heartbeat = Heartbeat(
            broker=broker,
            settings=self.app.settings,
            worker_id=self.worker_id,
            info={"queues": self.queues, "concurrency": self.concurrency},
            running=lambda: self.in_flight,
            on_cancel=self.request_cancel,
            on_paused=self._set_paused,
            on_beat=self._flush_counters,
            heartbeat_file=self.heartbeat_file,
            # Periodic tasks: every (non-burst) worker runs the scheduler; the database
            # lets each tick in once. Built first, so a bad schedule fails at start.
            scheduler=None if self.burst else Scheduler(self.app, worker_id=self.worker_id),
        )
        self.heartbeat.start()
        try:
            self._claim_loop(stop)
            stop.set()
            with self._changed:
                unstarted = [] if self.run_ahead_on_stop else self.ahead.clear()
            if unstarted:  # not run at shutdown: back to the queue at once
                self._hand_back(unstarted, "the worker is stopping")
            clean = self._drain(grace, force)
        finally:
            self._leave()
        return clean

    def _claim_loop(self, stop: threading.Event) -> None:
        broker = self.app.broker
        failures = 0
        while not stop.is_set():
            free = self._wait_for_free_slot(stop)
            self._hand_back_stale()
            if free == 0 or stop.is_set():
                continue
            free = self.claim_limit(free, stop)
            if free == 0:
                continue
            # Burst mode may end only if nothing was held *before* this claim: an outcome
            # stored after it (a retry, say) would otherwise be left behind.
            idle_before = not self.in_flight
            try:
                if failures:
                    self._reclaim_orphans()
                claimed = broker.claim(self.worker_id, self.queues, free, exclude=self.paused)
                failures = 0
            except DatabaseError:
                failures += 1
                delay = min(MAX_DB_BACKOFF, self.poll_interval * 2**failures)
                logger.warning(
                    "Claiming failed (database error); retrying in %.1f s",
                    delay,
                    exc_info=True,
                    extra={"action": "claim_failed"},
                )
                reset_connection(self.app.settings.database)
                stop.wait(delay)
                continue
            if claimed:
                self.on_claimed(claimed)
                with self._changed:
                    # Free threads get theirs now; the rest waits in the buffer for the
                    # threads to take as they come free.
                    now = max(0, self.concurrency - self._executing)
                    self._executing += min(now, len(claimed))
                    for task in claimed:
                        self._running[task.uuid] = None
                    self.ahead.add(claimed[now:], time.monotonic())
                for task in claimed[:now]:
                    self._inbox.put(task)
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
                self._wait_for_change(stop)
                continue
            broker.wait_for_work(self._idle_for(), stop, self.queues)

    def _flush_counters(self) -> None:
        self.counters.flush(self.app.broker.storage.global_config, self.worker_id)

    def _set_paused(self, queues: set[str]) -> None:
        if queues != self.paused:
            logger.info("Paused queues: %s", ", ".join(sorted(queues)) or "none")
        self.paused = frozenset(queues)

    def claim_limit(self, free: int, stop: threading.Event) -> int:
        """How many tasks to claim now, given ``free`` threads (a hook for subclasses)."""
        return free

    def on_claimed(self, tasks: list[Task]) -> None:
        """Called on the main loop with each non-empty claim (a hook for subclasses)."""

    def on_task_start(self, task: Task, max_time: float | None) -> None:
        """Called on the task's thread just before it runs (a hook for subclasses)."""

    def on_task_end(self, task: Task) -> None:
        """Called on the task's thread once its outcome is stored (a hook for subclasses)."""

    def _reclaim_orphans(self) -> None:
        """After a failed claim, hand back rows the claim may have marked ours anyway
        (it committed, but the reply was lost), so they do not sit in ``process``."""
        with self._changed:
            known = set(self._running)
        self.app.broker.rescue(self.worker_id, crashed=False, keep=known)

    def _idle_for(self) -> float:
        """How long to sleep with nothing ready: until the earliest delayed task is due,
        a poll interval at most (new tasks wake the worker sooner, on PostgreSQL)."""
        try:
            due = self.app.broker.next_run_after(self.queues, self.paused)
        except DatabaseError:
            reset_connection(self.app.settings.database)
            return self.poll_interval
        if due is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, (due - timezone.now()).total_seconds()))

    def _free_slots(self) -> int:
        """How many tasks to claim now: one per free thread, plus the buffer's room
        (see :mod:`.prefetch`); none while too many outcomes wait to be stored (a slow
        database must slow the claims, not grow a backlog)."""
        waiting = len(self._running) - self._executing - len(self.ahead)
        if waiting >= max(2 * self.concurrency, OUTCOME_BACKLOG):
            return 0
        return max(0, self.concurrency - self._executing) + self.ahead.room()

    def _wait_for_free_slot(self, stop: threading.Event) -> int:
        with self._changed:
            while not self._free_slots() and not stop.is_set():
                self._changed.wait(0.5)
                if self.ahead.has_stale(time.monotonic()):
                    return 0  # hand those back first
            if self._executing and self._free_slots() < self.concurrency // 2:
                # Busy: linger a moment so that one claim fills several threads.
                self._changed.wait(CLAIM_LINGER)
            return self._free_slots()

    def _hand_back_stale(self) -> None:
        """Rows that waited in the buffer too long go back to the queue (the threads are
        busy with longer tasks than expected), for an idle worker to take."""
        with self._changed:
            stale = self.ahead.stale(time.monotonic())
        if stale:
            self._hand_back(stale, "waited too long for a thread")

    def _hand_back(self, tasks: list[Task], why: str) -> None:
        """Release claimed tasks that never started; if the database is away, they wait
        in the buffer again (a shutdown's are left to the rescue in ``_leave``)."""
        try:
            self.app.broker.release(self.worker_id, [task.uuid for task in tasks])
        except DatabaseError:
            logger.warning("Could not hand back %d claimed task(s)", len(tasks), exc_info=True)
            reset_connection(self.app.settings.database)
            with self._changed:
                self.ahead.put_back(tasks, time.monotonic())
            return
        logger.debug(
            "Handed back %d claimed task(s) that had not started: %s",
            len(tasks),
            why,
            extra={"action": "handed_back_unstarted", "count": len(tasks)},
        )
        with self._changed:
            for task in tasks:
                self._running.pop(task.uuid, None)
            self._changed.notify_all()

    def _wait_for_change(self, stop: threading.Event) -> None:
        with self._changed:
            if self._running and not stop.is_set():
                self._changed.wait(0.5)

    def _drain(self, grace: float, force: threading.Event) -> bool:
        """Let running tasks finish, up to ``grace`` seconds or until ``force``."""
        deadline = time.monotonic() + grace
        if self.in_flight:
            logger.info(
                "Stopping: waiting up to %g s for %d running task(s)", grace, self.in_flight
            )
        with self._changed:
            while self._running and not force.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.1))
            return not self._running

    def _leave(self) -> None:
        """Stop the heartbeat, hand back unfinished tasks, and deregister."""
        broker = self.app.broker
        if self.heartbeat is not None:
            self.heartbeat.stop()
        with self._changed:
            unfinished = len(self._running)
        try:
            if unfinished:
                rescued = broker.rescue(self.worker_id, crashed=False)
                logger.warning(
                    "Left %d unfinished task(s) for other workers",
                    len(rescued),
                    extra={"action": "handed_back"},
                )
            broker.forget_worker(self.worker_id)
            self.counters.retire(broker.storage.global_config, self.worker_id)
        except DatabaseError:
            logger.warning(
                "Could not deregister; the heartbeat will expire and others will rescue "
                "this worker's tasks",
                exc_info=True,
            )

    def request_cancel(self, uuids: set[uuid_lib.UUID]) -> None:
        """Pass cancel requests to the running tasks they name."""
        with self._changed:
            contexts = [self._running.get(uuid) for uuid in uuids]
            unstarted = self.ahead.remove(uuids)
        for ctx in contexts:
            if ctx is not None and not ctx.is_cancelled:
                ctx.request_cancel()
        for task in unstarted:  # claimed ahead: it ends cancelled without running
            self._completed.put(_Done(task, Outcome(status=TaskStatus.CANCEL), 0.0))

    # -- one thread ----------------------------------------------------------------------
    def _thread_main(self) -> None:
        alias = self.app.settings.database
        connection = connections[alias]  # this thread's, for its life (looked up once)
        last_used = time.monotonic()
        following: Task | None = None  # the next task, from the buffer of claimed ones
        try:
            while True:
                task = following or self._inbox.get()
                following = None
                if task is None:
                    return
                try:
                    if time.monotonic() - last_used > IDLE_PING_AFTER:
                        ensure_usable(alias)
                    following = self.process(task)
                except BaseException as exc:
                    # process() handles everything a task can do; this is our own bug.
                    # The task still gets an outcome, so it is not left in `process`.
                    logger.exception(
                        "Processing task %s failed",
                        task.uuid,
                        extra=task_fields(task, action="worker_bug"),
                    )
                    following = self._executed(
                        _Done(task, Outcome(status=TaskStatus.ERROR,
                                            error=describe_exception(exc)), 0.0)
                    )  # fmt: skip
                finally:
                    if connection.errors_occurred:
                        close_if_broken(alias)
                    last_used = time.monotonic()
        finally:
            connections.close_all()

    def _release(self, tasks: list[Task]) -> None:
        """Free the tasks' slots: they are finished and stored (or left for the rescuer).
        One wake-up for a whole batch, not one per task."""
        with self._changed:
            for task in tasks:
                self._running.pop(task.uuid, None)
            self._changed.notify_all()

    def process(self, task: Task) -> Task | None:
        """Run one claimed task and hand its outcome to the completer; never raises.
        Returns the thread's next task when one waits in the buffer."""
        try:
            definition = self.app.registry.get(task.task_name)
        except TaskNotRegistered as exc:
            outcome = Outcome(
                status=TaskStatus.ERROR, error=describe_exception(exc), traceback=str(exc)
            )
            logger.error(
                "Task %s names %r, which is not registered on this worker",
                task.uuid,
                task.task_name,
                extra=task_fields(task, action="unknown_task"),
            )
            return self._executed(_Done(task, outcome, 0.0))
        ctx = TaskContext(definition, task, timekeeper=self.timekeeper)
        with self._changed:
            self._running[task.uuid] = ctx
        if task.cancel_requested:
            ctx.request_cancel()
        executor = self._executor(definition)
        self.on_task_start(task, executor.max_time(definition))
        signals.send_from_worker(signals.task_started, type(self.app), task=task)
        started = time.monotonic()
        outcome = executor.execute(definition, task, ctx)
        if outcome.lost:
            # The database cut this connection: the next task gets a fresh one at once,
            # without a ping on a socket that may hang until TCP gives up.
            reset_connection(self.app.settings.database)
        return self._executed(_Done(task, outcome, time.monotonic() - started))

    def _executed(self, done: _Done) -> Task | None:
        """The outcome goes to the completer, and the thread takes the next task waiting
        in the buffer, if any (in the same lock: a thread is never idle while a claimed
        task waits), or is free again. (The
        :class:`~django_qtasks.inline.InlineWorker` of immediate mode and the test
        helpers overrides this to ``_store`` at once, in the caller's thread.)"""
        self._completed.put(done)
        with self._changed:
            self.ahead.record(done.duration)
            following = self.ahead.take()
            if following is None:
                self._executing -= 1
            self._changed.notify_all()
        return following

    def _executor(self, definition: BaseTask[Any]) -> BaseTaskExecutor:
        cls = definition.options.executor
        if cls is None:
            return self.default_executor
        if cls not in self._executors:
            self._executors[cls] = cls(self.app.settings)
        return self._executors[cls]

    # -- the completer ---------------------------------------------------------------------
    def _completer_main(self) -> None:
        """Store outcomes in batches: whatever finished while the last batch was being
        written goes in the next one, in one transaction. Idle, a batch is one task, so
        batching adds no wait; busy, it saves a commit per task."""
        try:
            while True:
                first = self._completed.get()
                if first is None:
                    return
                batch = [first]
                while len(batch) < MAX_COMPLETION_BATCH:
                    try:
                        more = self._completed.get_nowait()
                    except queue_lib.Empty:
                        break
                    if more is None:
                        self._completed.put(None)  # stop after this batch
                        break
                    batch.append(more)
                self._store(batch)
        finally:
            connections.close_all()

    def _store(self, batch: list[_Done]) -> None:
        """Store a batch of outcomes, then free their slots and tell the world."""
        stored = self._write(batch)
        for done in batch:
            self.on_task_end(done.task)
        self._release([done.task for done in batch])
        for done, ok in zip(batch, stored, strict=True):
            task, outcome = done.task, done.outcome
            if not ok:
                continue
            self.counters.record(task, outcome.status, done.duration)
            signals.send_from_worker(
                signals.task_finished, type(self.app), task=task, outcome=outcome
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

    def _write(self, batch: list[_Done]) -> list[bool]:
        """``finish_many``, riding out a dropped connection or a database restart.

        It only changes rows this worker still holds, so a retry after a lost reply
        cannot overwrite anything. If the database stays away past the heartbeat
        timeout, the tasks are rescued and run again elsewhere (at-least-once). An
        outcome the database refuses for good (say, a NUL character in a result) is
        stored as an ``error`` that says so, instead of being retried for nothing.
        """
        settings = self.app.settings
        deadline = time.monotonic() + settings.heartbeat_timeout
        delay = 0.05
        while True:
            try:
                return self._persist(batch)
            except (OperationalError, InterfaceError):
                logger.warning(
                    "Storing the outcome of task(s) %s failed; retrying in %.2f s",
                    _uuids(batch),
                    delay,
                    exc_info=True,
                    extra={"action": "finish_failed", "task_uuids": _uuid_list(batch)},
                )
                reset_connection(settings.database)
                if time.monotonic() + delay > deadline:
                    logger.error(
                        "Giving up storing the outcome of task(s) %s; they will be rescued",
                        _uuids(batch),
                        extra={"action": "finish_abandoned", "task_uuids": _uuid_list(batch)},
                    )
                    return [False] * len(batch)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
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
                return self._write([_Done(done.task, failed, done.duration)])


    def _persist(self, batch: list[_Done]) -> list[bool]:
        """Store the outcomes; a run the database cut short is rescued instead (its
        attempt unspent). For each, whether the row was still this worker's."""
        broker = self.app.broker
        if not any(done.outcome.lost for done in batch):  # the common case: one statement
            return broker.finish_many([(done.task, done.outcome) for done in batch])
        finished = iter(
            broker.finish_many([(d.task, d.outcome) for d in batch if not d.outcome.lost])
        )
        stored = []
        for done in batch:
            if not done.outcome.lost:
                stored.append(next(finished))
                continue
            why = f"the database cut its worker's connection ({_exception_text(done.outcome)})"
            delay = _seconds_until(done.outcome.run_after)
            stored.append(broker.rescue_run(done.task, why, delay=delay) is not None)
        return stored


def _exception_text(outcome: Outcome, limit: int = 200) -> str:
    """``Type: message`` of a failed attempt, on one line: a log line or a history
    entry names the cause (psycopg's messages span lines, a user's may be long)."""
    error = outcome.error or {}
    name = str(error.get("type", "")).rpartition(".")[2]
    text = str(error.get("message") or "").strip().split("\n", 1)[0]
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"{name}: {text}" if text else name


def _seconds_until(when: Any) -> float:
    return 0.0 if when is None else max(0.0, (when - timezone.now()).total_seconds())


def _finished_line(done: _Done) -> tuple[Any, ...]:
    """The text line of a finished attempt (format and arguments): a failure names the
    exception, and a retry says when the next try is due."""
    task, outcome = done.task, done.outcome
    if outcome.status not in (TaskStatus.RETRY, TaskStatus.ERROR) or outcome.error is None:
        return "Task %s %s: %s in %.3f s", task.task_name, task.uuid, outcome.status, done.duration
    head = "Task %s %s: attempt %d of %d failed after %.3f s (%s)"
    args = (task.task_name, task.uuid, task.attempt, task.max_retries + 1, done.duration,
            _exception_text(outcome))  # fmt: skip
    if outcome.status == TaskStatus.ERROR:
        return (head + "; it ends in error", *args)
    return (head + "; next try in %.1f s", *args, _seconds_until(outcome.run_after))


def _uuid_list(batch: list[_Done]) -> list[str]:
    return [str(done.task.uuid) for done in batch]


def _uuids(batch: list[_Done], shown: int = 10) -> str:
    """The batch's task uuids for a log line: the first ``shown``, then how many more."""
    names = _uuid_list(batch)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _unstorable(exc: BaseException) -> dict[str, Any]:
    message = f"The task's outcome could not be stored: {exc}"
    return {
        "error": {"type": "django_qtasks.exceptions.OutcomeNotStored", "message": message},
        "traceback": message,
    }


class _Done(NamedTuple):
    task: Task
    outcome: Outcome
    duration: float
