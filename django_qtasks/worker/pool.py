"""The process pool: ``qtasks_worker --processes P``.

A supervising parent runs P child processes; each child is a full thread worker with
its own id, heartbeat and claims. The parent never runs tasks. It restarts children
that die, recycles them after ``max_tasks_per_child``, and enforces what a thread
cannot: a hard ``max_time`` and a forced cancel, by ending the child that runs the
task. Whatever a dead or ended child was running is settled by the parent at once,
not after a heartbeat expiry:

* the task that overran or was cancelled ends like a timeout (retry policy) or
  ``cancel``;
* a child that crashed (``os._exit``, a segfault, the OOM killer) spends the
  attempt of every task it ran, so a task that keeps killing children stops;
* tasks that were only collateral (their child was ended for another task's sake,
  or at shutdown) go back to waiting without spending their attempt.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import uuid as uuid_lib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError

from django_qtasks.exceptions import TaskNotRegistered
from django_qtasks.global_config.counters import TaskCounters
from django_qtasks.models import TaskStatus
from django_qtasks.settings import import_component
from django_qtasks.storage.db import reset_connection
from django_qtasks.values import Outcome, Task
from django_qtasks.worker.executor import BaseTaskExecutor
from django_qtasks.worker.pool_child import child_entry
from django_qtasks.worker.timelimit import TaskTimeLimitExceeded, time_limit_message
from django_qtasks.worker.worker import BaseWorker, ThreadWorker, make_worker_id

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from django_qtasks.api.queue_tasks import BaseQueueTasks

logger = logging.getLogger("django_qtasks.pool")

HARD_LIMIT_MARGIN = 1.0  # seconds past max_time before the child is ended
FORCE_CANCEL_AFTER = 2.0  # seconds a cancelled sync task gets to stop by itself
MAX_RESTART_DELAY = 30.0


# -- the child -----------------------------------------------------------------------------
class ChildWorker(ThreadWorker):
    """A thread worker that tells its parent what it must watch, and retires after N tasks.

    The parent needs to hear of a task only to end the child for its sake: when it has a
    hard time limit (``max_time``) or is being cancelled. Every other task runs without
    a message (a message per start and end cost more CPU than running a short task), and
    a task's "end" is sent only if its "start" or "cancel" was.
    """

    def __init__(
        self, app: BaseQueueTasks, *, to_parent: Connection, max_tasks: int | None, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.to_parent = to_parent
        self.max_tasks = max_tasks
        self.claimed_total = 0
        self._send_lock = threading.Lock()
        # Under _send_lock: the tasks started and not ended, and which of them the
        # parent watches (it was told of their start or cancel, and waits for the end).
        self._live: set[uuid_lib.UUID] = set()
        self._watched: set[uuid_lib.UUID] = set()

    def send(self, *message: Any) -> None:
        with self._send_lock:
            self._send(message)

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self.to_parent.send(message)
        except (BrokenPipeError, EOFError, OSError):
            logger.debug("The parent is gone; message %r dropped", message)

    def claim_limit(self, free: int, stop: threading.Event) -> int:
        if self.max_tasks is None:
            return free
        left = self.max_tasks - self.claimed_total
        if left <= 0:
            self.send("retire", "")  # finish what runs, exit, and get replaced
            self.run_ahead_on_stop = True  # what it claimed ahead counts among its tasks
            stop.set()
            return 0
        return min(free, left)

    def on_claimed(self, tasks: list[Task]) -> None:
        self.claimed_total += len(tasks)

    def on_task_start(self, task: Task, max_time: float | None) -> None:
        with self._send_lock:
            self._live.add(task.uuid)
            if max_time is not None:
                self._watched.add(task.uuid)
                self._send(("start", str(task.uuid), max_time))

    def on_task_end(self, task: Task) -> None:
        with self._send_lock:
            self._live.discard(task.uuid)
            if task.uuid in self._watched:
                self._watched.discard(task.uuid)
                self._send(("end", str(task.uuid)))

    def request_cancel(self, uuids: set[uuid_lib.UUID]) -> None:
        super().request_cancel(uuids)
        with self._send_lock:
            # Only tasks that still run: a "cancel" after its task's end would have the
            # parent end this child for a task that is done.
            for uuid in uuids & self._live:
                self._watched.add(uuid)
                self._send(("cancel", str(uuid)))


def _watch_parent(from_parent: Connection, starter: Any) -> None:
    """Stop this child gracefully when its parent dies (the pipe reaches EOF)."""
    with contextlib.suppress(EOFError, OSError):
        from_parent.recv()
    starter.request_stop()


def run_child(
    spec: dict[str, Any],
    to_parent: Connection,
    from_parent: Connection,
    early_stop: threading.Event,
) -> None:
    """The child process, once Django is set up: one thread worker until told to stop."""
    from django_qtasks import app
    from django_qtasks.log import configure_logging

    configure_logging(spec["verbosity"])
    starter = app.build_starter(
        queues=spec["queues"],
        concurrency=spec["concurrency"],
        burst=spec["burst"],
        poll_interval=spec["poll_interval"],
        grace=spec["grace"],
        worker_class=ChildWorker,
        worker_options={
            "to_parent": to_parent,
            "max_tasks": spec["max_tasks"],
            "worker_id": spec["worker_id"],
            "heartbeat_file": spec["heartbeat_file"],
        },
    )
    threading.Thread(
        target=_watch_parent, args=(from_parent, starter), name="qtasks-parent", daemon=True
    ).start()
    # A SIGTERM that came while Django loaded still counts; from here on, the Starter's
    # own handler takes them (installed with no gap in between).
    signal.signal(signal.SIGTERM, lambda signum, frame: starter.request_stop())
    if early_stop.is_set():
        starter.request_stop()
    raise SystemExit(starter.run(signals=(signal.SIGTERM,)))


# -- the parent ----------------------------------------------------------------------------
@dataclass
class _Child:
    number: int
    worker_id: str
    process: BaseProcess
    messages: Connection
    keepalive: Connection
    started: float = field(default_factory=time.monotonic)
    # uuid -> deadline (monotonic) of the hard time limit, or None
    running: dict[str, float | None] = field(default_factory=dict)
    # uuid -> when a forced cancel is due
    cancelling: dict[str, float] = field(default_factory=dict)
    stopping: bool = False  # asked to stop: the pool is shutting down
    retiring: bool = False  # took its max tasks; replaced when it exits
    ended: bool = False  # killed by the parent for a task's sake; its tasks are settled


class ProcessPoolWorker(BaseWorker):
    """Supervises ``processes`` children, each with ``concurrency`` threads."""

    def __init__(
        self,
        app: BaseQueueTasks,
        *,
        processes: int,
        max_tasks_per_child: int | None = None,
        grace: float | None = None,
        verbosity: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.processes = processes
        self.max_tasks_per_child = max_tasks_per_child
        self.verbosity = verbosity
        self.children: dict[int, _Child] = {}
        self._restart_delay: dict[int, float] = {}
        self._pending: dict[int, float] = {}  # child number -> when to start it again
        self._context = multiprocessing.get_context("spawn")
        settings = self.settings
        self.executor: BaseTaskExecutor = import_component(settings, "executor", BaseTaskExecutor)(
            settings
        )
        self._grace = settings.grace if grace is None else grace
        # Outcomes settled here, for the metrics view; folded with the child's own counts.
        self.counters = TaskCounters()

    # -- children ---------------------------------------------------------------------------
    def _spawn(self, number: int) -> _Child:
        worker_id = f"{make_worker_id()}/{number}"
        messages_out, messages_in = self._context.Pipe(duplex=False)
        keepalive_in, keepalive_out = self._context.Pipe(duplex=False)
        spec = {
            "queues": self.queues,
            "concurrency": self.concurrency,
            "poll_interval": self.poll_interval,
            "grace": self._grace,
            "max_tasks": self.max_tasks_per_child,
            "worker_id": worker_id,
            "verbosity": self.verbosity,
            "burst": self.burst,
            "heartbeat_file": self.heartbeat_file,  # each child touches it on its heartbeats
        }
        process = self._context.Process(
            target=child_entry,
            args=(spec, messages_in, keepalive_in),
            name=f"qtasks-child-{number}",
            daemon=False,
        )
        process.start()
        messages_in.close()
        keepalive_in.close()
        child = _Child(number, worker_id, process, messages_out, keepalive_out)
        logger.info("Started child %d (pid %s, %s)", number, process.pid, worker_id)
        return child

    def _receive(self, child: _Child) -> None:
        while child.messages.poll():
            try:
                kind, uuid, *rest = child.messages.recv()
            except (EOFError, OSError):
                return
            if kind == "start":
                max_time = rest[0]
                deadline = None if max_time is None else time.monotonic() + max_time
                child.running[uuid] = None if deadline is None else deadline + HARD_LIMIT_MARGIN
            elif kind == "end":
                child.running.pop(uuid, None)
                child.cancelling.pop(uuid, None)
            elif kind == "retire":
                child.retiring = True
            elif kind == "cancel":
                child.running.setdefault(uuid, None)
                child.cancelling.setdefault(uuid, time.monotonic() + FORCE_CANCEL_AFTER)

    def _end_child(self, child: _Child, *, why: str, victim: str | None, outcome: str) -> None:
        """End a child for one task's sake: settle that task, hand back the others."""
        logger.warning(
            "Ending child %d (pid %s): %s",
            child.number,
            child.process.pid,
            why,
            extra={"action": "child_killed", "task_uuid": victim},
        )
        child.ended = True
        child.process.kill()
        child.process.join(5)
        if victim is not None:
            self._settle(child, victim, outcome)
        self._rescue(child, crashed=False)

    def _settle(self, child: _Child, uuid: str, outcome: str) -> None:
        """Store how the overrun or cancelled task ended, as its own worker would have.
        If the database is away, the task is left to the rescuer (the child is gone)."""
        try:
            self._settle_now(child, uuid, outcome)
        except DatabaseError:
            logger.warning("Could not settle task %s; the rescuer will", uuid, exc_info=True)
            reset_connection(self.settings.database)

    def _settle_now(self, child: _Child, uuid: str, outcome: str) -> None:
        task = self.broker.storage.get(uuid)
        if task is None or task.status != TaskStatus.PROCESS or task.worker_id != child.worker_id:
            return
        if outcome == TaskStatus.CANCEL:
            result = Outcome(status=TaskStatus.CANCEL)
        else:
            try:
                definition = self.registry.get(task.task_name)
            except TaskNotRegistered:
                result = Outcome(status=TaskStatus.ERROR)
            else:
                executor_cls = definition.options.executor
                executor = executor_cls(self.settings) if executor_cls else self.executor
                max_time = executor.max_time(definition) or 0
                error = TaskTimeLimitExceeded(time_limit_message(max_time))
                result = executor.failure(definition, task, error)
        if self.broker.storage.finish(task, result):
            self.counters.record(task, result.status)

    def _rescue(self, child: _Child, *, crashed: bool) -> None:
        for attempt in range(3):
            try:
                self.broker.storage.rescue(child.worker_id, crashed=crashed)
                self.broker.forget_worker(child.worker_id)
                self.counters.retire(self.broker.config, child.worker_id)
                return
            except DatabaseError:
                logger.warning(
                    "Rescuing after child %d failed (try %d)",
                    child.number,
                    attempt + 1,
                    exc_info=True,
                )
                reset_connection(self.settings.database)
        # Their heartbeat expires and any worker's rescuer takes them then.

    def _check(self, child: _Child, now: float) -> None:
        """Hard time limits and forced cancels for one child."""
        for uuid, deadline in list(child.running.items()):
            if deadline is not None and now >= deadline:
                self._end_child(
                    child,
                    why=f"task {uuid} ran past its max_time",
                    victim=uuid,
                    outcome=TaskStatus.ERROR,
                )
                return
        for uuid, due in list(child.cancelling.items()):
            if now >= due:
                self._end_child(
                    child,
                    why=f"task {uuid} did not stop when cancelled",
                    victim=uuid,
                    outcome=TaskStatus.CANCEL,
                )
                return

    def _reap(self, child: _Child) -> None:
        """A child exited: settle what it ran, and schedule its replacement if one is due."""
        del self.children[child.number]
        code = child.process.exitcode
        self._receive(child)
        if child.ended:
            # Ended by us for one task's sake; everything it ran is settled already.
            self._forget(child)
            self._pending[child.number] = time.monotonic()
            return
        if code == 0 or child.stopping:
            # It hands back what it ran as it stops, unless stopped too hard to: the
            # parent does not hear of every task, so it hands back whatever is left.
            self._rescue(child, crashed=False)
            if child.retiring or not (child.stopping or self.burst):
                # Retired, or stopped from outside: the pool keeps its size.
                logger.info("Child %d exited; starting a fresh one", child.number)
                self._pending[child.number] = time.monotonic()
            return  # otherwise: stopping, or a burst child that found nothing left
        logger.error(
            "Child %d (pid %s) died with exit code %s; rescuing its tasks",
            child.number,
            child.process.pid,
            code,
            extra={"action": "child_died"},
        )
        self._rescue(child, crashed=True)
        if time.monotonic() - child.started < 5:
            previous = self._restart_delay.get(child.number, 0.0)
            delay = min(MAX_RESTART_DELAY, max(0.5, 2 * previous))
            logger.warning("Child %d keeps dying; restarting it in %.1f s", child.number, delay)
        else:
            delay = 0.0
        self._restart_delay[child.number] = delay
        self._pending[child.number] = time.monotonic() + delay

    def _forget(self, child: _Child) -> None:
        try:
            self.broker.forget_worker(child.worker_id)
        except DatabaseError:
            reset_connection(self.settings.database)

    # -- the supervisor loop ----------------------------------------------------------------
    def run(self, stop: threading.Event, force: threading.Event, grace: float) -> bool:
        for number in range(self.processes):
            self.children[number] = self._spawn(number)
        clean = True
        forced = False
        deadline = 0.0
        while self.children or (self._pending and not stop.is_set()):
            now = time.monotonic()
            if stop.is_set() and not deadline:
                deadline = now + grace + 5
                self._pending.clear()
                for child in self.children.values():
                    child.stopping = True
                    _signal(child.process, signal.SIGTERM)
            if deadline and not forced and (force.is_set() or now > deadline):
                forced, clean = True, False
                deadline = now + 5
                for child in self.children.values():
                    _signal(child.process, signal.SIGTERM)  # the child's own "leave now"
            if forced and now > deadline:
                for child in self.children.values():
                    child.process.kill()
            for number, due in list(self._pending.items()):
                if now >= due:
                    del self._pending[number]
                    self.children[number] = self._spawn(number)
            sources: list[Any] = []
            for child in self.children.values():
                sources += [child.messages, child.process.sentinel]
            multiprocessing.connection.wait(sources, timeout=0.1)
            now = time.monotonic()
            for child in list(self.children.values()):
                self._receive(child)
                if not child.process.is_alive():
                    if child.stopping:
                        clean = clean and child.process.exitcode == 0
                    self._reap(child)
                elif not child.stopping:
                    self._check(child, now)
        return clean


def _signal(process: BaseProcess, signum: int) -> None:
    if process.pid is not None and process.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)


__all__ = ["ChildWorker", "ProcessPoolWorker", "run_child"]
