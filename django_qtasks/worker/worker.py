"""Worker: runs claimed tasks concurrently and stores how they ended.

:class:`ThreadWorker` composes the parts, each in its own module: the claim loop
(:mod:`.claimloop`) claims tasks and waits for work through the Broker, the threads
(:mod:`.threadpool`) run them, the completer (:mod:`.completer`) stores their outcomes
in batches, all sharing what the worker holds (:mod:`.slots`) and riding out database
outages the same way (:mod:`.dbretry`). A :class:`~django_qtasks.heartbeat.Heartbeat`
keeps the worker visibly alive and a :class:`~django_qtasks.timelimit.Timekeeper`
enforces ``max_time`` on sync tasks.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid as uuid_lib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections

from django_qtasks import signals
from django_qtasks.exceptions import TaskNotRegistered, describe_exception
from django_qtasks.global_config.counters import TaskCounters
from django_qtasks.log import task_fields
from django_qtasks.models import TaskStatus
from django_qtasks.settings import import_component
from django_qtasks.values import Outcome, Task
from django_qtasks.worker.claimloop import ClaimLoop
from django_qtasks.worker.completer import Completer, Done, exception_text
from django_qtasks.worker.context import TaskContext
from django_qtasks.worker.dbretry import DatabaseRetry
from django_qtasks.worker.executor import BaseTaskExecutor
from django_qtasks.worker.heartbeat import Heartbeat
from django_qtasks.worker.scheduler import Scheduler
from django_qtasks.worker.slots import Slots
from django_qtasks.worker.threadpool import ThreadPool
from django_qtasks.worker.timelimit import Timekeeper

if TYPE_CHECKING:
    from django_qtasks.api.queue_tasks import BaseQueueTasks
    from django_qtasks.api.task import BaseTask
    from django_qtasks.worker.prefetch import ClaimAhead

logger = logging.getLogger("django_qtasks.worker")


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
        # What the worker uses, taken once: the Broker (its only path to Storage and
        # GlobalConfig), the registry of tasks, the settings. ``app`` stays for the
        # scheduler and as the sender of the task signals.
        self.app = app
        self.broker = app.broker
        self.registry = app.registry
        self.settings = app.settings
        self.queues = queues
        self.concurrency = concurrency
        self.burst = burst
        self.poll_interval = poll_interval
        self.worker_id = worker_id or make_worker_id()
        # Touched on each heartbeat that reached the database (a liveness probe's file).
        self.heartbeat_file = heartbeat_file or self.settings.heartbeat_file

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
        settings = self.settings
        broker = self.broker
        self.slots = Slots(self.concurrency, settings.prefetch)
        self.retry = DatabaseRetry.for_settings(settings, poll_interval=self.poll_interval)
        # Outcomes counted for the metrics view, flushed to GlobalConfig on each heartbeat.
        self.counters = TaskCounters()
        self.pool = ThreadPool(
            self.concurrency, alias=settings.database, run=self.process, on_bug=self._on_bug
        )
        self.completer = Completer(
            broker=broker,
            slots=self.slots,
            retry=self.retry,
            counters=self.counters,
            sender=type(app),
            on_task_end=self.on_task_end,
        )
        self.claims = ClaimLoop(
            broker=broker,
            slots=self.slots,
            retry=self.retry,
            worker_id=self.worker_id,
            queues=self.queues,
            burst=self.burst,
            poll_interval=self.poll_interval,
            dispatch=self.pool.put,
            claim_limit=self.claim_limit,
            on_claimed=self.on_claimed,
        )
        # On stop, rows still in the buffer go back to the queue, unless this is set (a
        # pool child retiring after its max tasks runs what it took).
        self.run_ahead_on_stop = False
        self.default_executor: BaseTaskExecutor = import_component(
            settings, "executor", BaseTaskExecutor
        )(settings)
        self._executors: dict[type, BaseTaskExecutor] = {}
        self.timekeeper = Timekeeper()
        self.heartbeat: Heartbeat | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.pool.start()
        self.timekeeper.start()
        self.completer.start()
        super().start()

    def stop(self) -> None:
        deadline = time.monotonic() + 0.5  # threads still busy after a forced stop stay behind
        self.pool.stop(deadline)
        self.completer.stop(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        self.timekeeper.stop()
        connections.close_all()
        super().stop()

    @property
    def in_flight(self) -> int:
        return self.slots.in_flight

    @property
    def ahead(self) -> ClaimAhead:
        """The tasks claimed ahead of a free thread (see :mod:`.prefetch`)."""
        return self.slots.ahead

    @property
    def paused(self) -> frozenset[str]:
        return self.claims.paused

    # -- main loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event, force: threading.Event, grace: float) -> bool:
        self.heartbeat = Heartbeat(
            broker=self.broker,
            settings=self.settings,
            worker_id=self.worker_id,
            info={"queues": self.queues, "concurrency": self.concurrency},
            running=lambda: self.in_flight,
            on_cancel=self.request_cancel,
            on_paused=self._set_paused,
            on_beat=self._flush_counters,
            heartbeat_file=self.heartbeat_file,
            # Periodic tasks: every (non-burst) worker runs the scheduler; the database
            # lets each tick in once. Built first, so a bad schedule fails at start.
            scheduler=None
            if self.burst
            else Scheduler(self.app, worker_id=self.worker_id, retry=self.retry),
            retry=self.retry,
        )
        self.heartbeat.start()
        try:
            self.claims.run(stop)
            stop.set()
            unstarted = [] if self.run_ahead_on_stop else self.slots.clear_ahead()
            if unstarted:  # not run at shutdown: back to the queue at once
                self.claims.hand_back(unstarted, "the worker is stopping")
            clean = self._drain(grace, force)
        finally:
            self._leave()
        return clean

    def _flush_counters(self) -> None:
        self.counters.flush(self.broker.config, self.worker_id)

    def _set_paused(self, queues: set[str]) -> None:
        if queues != self.claims.paused:
            logger.info("Paused queues: %s", ", ".join(sorted(queues)) or "none")
        self.claims.paused = frozenset(queues)

    def claim_limit(self, free: int, stop: threading.Event) -> int:
        """How many tasks to claim now, given ``free`` threads (a hook for subclasses)."""
        return free

    def on_claimed(self, tasks: list[Task]) -> None:
        """Called on the main loop with each non-empty claim (a hook for subclasses)."""

    def on_task_start(self, task: Task, max_time: float | None) -> None:
        """Called on the task's thread just before it runs (a hook for subclasses)."""

    def on_task_end(self, task: Task) -> None:
        """Called on the task's thread once its outcome is stored (a hook for subclasses)."""

    def _drain(self, grace: float, force: threading.Event) -> bool:
        """Let running tasks finish, up to ``grace`` seconds or until ``force``."""
        if self.in_flight:
            logger.info(
                "Stopping: waiting up to %g s for %d running task(s)", grace, self.in_flight
            )
        return self.slots.drain(grace, force)

    def _leave(self) -> None:
        """Stop the heartbeat, hand back unfinished tasks, and deregister."""
        broker = self.broker
        if self.heartbeat is not None:
            self.heartbeat.stop()
        unfinished = self.in_flight
        try:
            if unfinished:
                rescued = broker.storage.rescue(self.worker_id, crashed=False)
                logger.warning(
                    "Left %d unfinished task(s) for other workers",
                    len(rescued),
                    extra={"action": "handed_back"},
                )
            broker.forget_worker(self.worker_id)
            self.counters.retire(broker.config, self.worker_id)
        except DatabaseError:
            logger.warning(
                "Could not deregister; the heartbeat will expire and others will rescue "
                "this worker's tasks",
                exc_info=True,
            )

    def request_cancel(self, uuids: set[uuid_lib.UUID]) -> None:
        """Pass cancel requests to the running tasks they name."""
        contexts, unstarted = self.slots.cancel(uuids)
        for ctx in contexts:
            if not ctx.is_cancelled:
                ctx.request_cancel()
        for task in unstarted:  # claimed ahead: it ends cancelled without running
            self.completer.put(Done(task, Outcome(status=TaskStatus.CANCEL), 0.0))

    # -- one task, on its thread -----------------------------------------------------------
    def process(self, task: Task) -> Task | None:
        """Run one claimed task and hand its outcome to the completer; never raises.
        Returns the thread's next task when one waits in the buffer."""
        try:
            definition = self.registry.get(task.task_name)
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
            return self._executed(Done(task, outcome, 0.0, registered=False))
        ctx = TaskContext(definition, task, timekeeper=self.timekeeper)
        self.slots.started(task, ctx)
        if task.cancel_requested:
            ctx.request_cancel()
        executor = self._executor(definition)
        self.on_task_start(task, executor.max_time(definition))
        signals.send_from_worker(signals.task_started, type(self.app), task=task)
        started = time.monotonic()
        outcome = executor.execute(definition, task, ctx)
        if outcome.lost:
            # The database cut this connection: the next task gets a fresh one at once,
            # without a ping on a socket that may hang until TCP gives up. The outage is
            # the worker's to log, once.
            self.retry.lost_run(exception_text(outcome))
        return self._executed(Done(task, outcome, time.monotonic() - started))

    def _on_bug(self, task: Task, exc: BaseException) -> Task | None:
        """process() handles everything a task can do; this is our own bug. The task
        still gets an outcome, so it is not left in ``process``."""
        outcome = Outcome(status=TaskStatus.ERROR, error=describe_exception(exc))
        return self._executed(Done(task, outcome, 0.0))

    def _executed(self, done: Done) -> Task | None:
        """The outcome goes to the completer, and the thread takes the next task waiting
        in the buffer, if any, or is free again. (The
        :class:`~django_qtasks.inline.InlineWorker` of immediate mode and the test
        helpers overrides this to store at once, in the caller's thread.)"""
        self.completer.put(done)
        return self.slots.executed(done.duration)

    def _executor(self, definition: BaseTask[Any]) -> BaseTaskExecutor:
        cls = definition.options.executor
        if cls is None:
            return self.default_executor
        if cls not in self._executors:
            self._executors[cls] = cls(self.settings)
        return self._executors[cls]
