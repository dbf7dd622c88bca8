"""Worker: runs claimed tasks concurrently and stores how they ended.

The main loop claims only as many tasks as there are free threads (no in-memory
backlog), hands them to the threads, and waits for work through the Broker. Each
thread keeps its own database connection for its life and closes it at the end.
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
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections
from django.utils.module_loading import import_string

from . import signals
from .exceptions import TaskNotRegistered, describe_exception
from .executor import BaseTaskExecutor
from .models import TaskStatus
from .task import Outcome, Task

if TYPE_CHECKING:
    from .queue_tasks import BaseQueueTasks
    from .task import BaseTask

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
    ) -> None:
        self.app = app
        self.queues = queues
        self.concurrency = concurrency
        self.burst = burst
        self.poll_interval = poll_interval
        self.worker_id = worker_id or make_worker_id()

    def start(self) -> None:
        signals.component_started.send(sender=type(self), component=self, name=self.component_name)

    def stop(self) -> None:
        signals.component_stopped.send(sender=type(self), component=self, name=self.component_name)

    @abstractmethod
    def run(self, stop: threading.Event) -> None:
        """Claim and run tasks until ``stop`` is set (or, in burst mode, nothing is left)."""

    @abstractmethod
    def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for running tasks; True if all finished."""


class ThreadWorker(BaseWorker):
    """N threads in this process; async tasks run on an event loop inside their thread."""

    def __init__(self, app: BaseQueueTasks, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._inbox: queue_lib.Queue[Task | None] = queue_lib.Queue()
        self._threads: list[threading.Thread] = []
        self._in_flight = 0
        self._changed = threading.Condition()
        settings = app.settings
        self.default_executor: BaseTaskExecutor = import_string(settings.executor)(settings)
        self._executors: dict[type, BaseTaskExecutor] = {}

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        for number in range(self.concurrency):
            thread = threading.Thread(
                target=self._thread_main, name=f"qtasks-worker-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        super().start()

    def stop(self) -> None:
        for _ in self._threads:
            self._inbox.put(None)
        for thread in self._threads:
            thread.join(timeout=0.5)
        self._threads = [t for t in self._threads if t.is_alive()]
        connections.close_all()
        super().stop()

    # -- main loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        broker = self.app.broker
        while not stop.is_set():
            free = self._wait_for_free_slot(stop)
            if free == 0:
                continue
            try:
                claimed = broker.claim(self.worker_id, self.queues, free)
            except DatabaseError:
                logger.exception("Claiming failed; retrying after %.1f s", self.poll_interval)
                connections[self.app.settings.database].close()
                stop.wait(self.poll_interval)
                continue
            if claimed:
                with self._changed:
                    self._in_flight += len(claimed)
                for task in claimed:
                    self._inbox.put(task)
                continue
            if self.burst:
                if self._idle():
                    return
                self._wait_for_change(stop)
                continue
            broker.wait_for_work(self.poll_interval, stop)

    def _idle(self) -> bool:
        with self._changed:
            return self._in_flight == 0

    def _wait_for_free_slot(self, stop: threading.Event) -> int:
        with self._changed:
            while self._in_flight >= self.concurrency and not stop.is_set():
                self._changed.wait(0.5)
            return max(0, self.concurrency - self._in_flight)

    def _wait_for_change(self, stop: threading.Event) -> None:
        with self._changed:
            if self._in_flight and not stop.is_set():
                self._changed.wait(0.5)

    def drain(self, grace: float) -> bool:
        deadline = time.monotonic() + grace
        with self._changed:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))
        return True

    # -- one thread ----------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            while True:
                task = self._inbox.get()
                if task is None:
                    return
                try:
                    self.process(task)
                finally:
                    with self._changed:
                        self._in_flight -= 1
                        self._changed.notify_all()
        finally:
            connections.close_all()

    def process(self, task: Task) -> None:
        """Run one claimed task and store its outcome; never raises."""
        try:
            definition = self.app.registry.get(task.task_name)
        except TaskNotRegistered as exc:
            outcome = Outcome(status=TaskStatus.ERROR, error=describe_exception(exc))
            logger.error(
                "Task %s names %r, which is not registered on this worker",
                task.uuid,
                task.task_name,
                extra={"action": "unknown_task", "task_uuid": str(task.uuid)},
            )
            self._store(task, outcome)
            return
        signals.task_started.send(sender=type(definition), task=task)
        outcome = self._executor(definition).execute(definition, task)
        self._store(task, outcome)
        signals.task_finished.send(sender=type(definition), task=task, outcome=outcome)

    def _executor(self, definition: BaseTask[Any]) -> BaseTaskExecutor:
        cls = definition.options.executor
        if cls is None:
            return self.default_executor
        if cls not in self._executors:
            self._executors[cls] = cls(self.app.settings)
        return self._executors[cls]

    def _store(self, task: Task, outcome: Outcome) -> None:
        broker = self.app.broker
        for attempt in (1, 2):
            try:
                broker.finish(task, outcome)
                break
            except DatabaseError:
                logger.exception(
                    "Storing the outcome of task %s failed (try %d)", task.uuid, attempt
                )
                connections[self.app.settings.database].close()
        logger.info(
            "Task %s %s: %s",
            task.task_name,
            task.uuid,
            outcome.status,
            extra={
                "action": "task_finished",
                "task_uuid": str(task.uuid),
                "task_name": task.task_name,
                "status": outcome.status,
                "attempt": task.attempt,
            },
        )
