"""The threads of a thread worker: each runs the tasks it is handed, one at a time.

Each thread keeps its own database connection for its life and closes it at the end;
a connection idle for a while is checked before a task uses it, and a broken one is
closed after the task, so the next task opens a fresh one.
"""

from __future__ import annotations

import logging
import queue as queue_lib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.db import connections

from django_qtasks.log import task_fields
from django_qtasks.storage.db import close_if_broken, ensure_usable

if TYPE_CHECKING:
    from django_qtasks.values import Task

logger = logging.getLogger("django_qtasks.worker")

IDLE_PING_AFTER = 1.0  # seconds a thread's connection may idle before a task pings it

#: Runs one task to its outcome and returns the thread's next task, if one waits.
RunTask = Callable[["Task"], "Task | None"]
#: The same when running it raised (a bug of ours): the task must still get an outcome.
OnBug = Callable[["Task", BaseException], "Task | None"]


class ThreadPool:
    """``size`` threads taking tasks from one inbox, each on its own connection."""

    def __init__(self, size: int, *, alias: str, run: RunTask, on_bug: OnBug) -> None:
        self.size = size
        self.alias = alias
        self.run = run
        self.on_bug = on_bug
        # SimpleQueue: a C queue without a Condition; the hand-offs are on the hot path.
        self._inbox: queue_lib.SimpleQueue[Task | None] = queue_lib.SimpleQueue()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for number in range(self.size):
            thread = threading.Thread(
                target=self._main, name=f"qtasks-worker-{number}", daemon=True
            )
            thread.start()
            self.threads.append(thread)

    def stop(self, deadline: float) -> None:
        """Ask every thread to end once idle and wait until ``deadline`` (monotonic);
        threads still busy then (after a forced stop) are left behind."""
        for _ in self.threads:
            self._inbox.put(None)
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.threads = [t for t in self.threads if t.is_alive()]

    def put(self, task: Task) -> None:
        self._inbox.put(task)

    def _main(self) -> None:
        alias = self.alias
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
                    following = self.run(task)
                except BaseException as exc:
                    # run() handles everything a task can do; this is our own bug.
                    logger.exception(
                        "Processing task %s failed",
                        task.uuid,
                        extra=task_fields(task, action="worker_bug"),
                    )
                    following = self.on_bug(task, exc)
                finally:
                    if connection.errors_occurred:
                        close_if_broken(alias)
                    last_used = time.monotonic()
        finally:
            connections.close_all()
