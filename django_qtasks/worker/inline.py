"""Running tasks in the caller's thread: immediate mode and the test helpers.

``QTASKS["MODE"] = "immediate"`` and :mod:`django_qtasks.testing` run tasks here. It
is the Worker's own code path without its threads: :class:`InlineWorker` is a
:class:`~django_qtasks.worker.ThreadWorker` whose ``process()`` (the task context,
the executor with its middlewares, retries and time limits, the signals) runs in the
calling thread, and whose outcomes are stored at once by its completer's ``store``
(``broker.storage.finish_many``, the log line, ``task_finished``). Tasks are claimed through
``broker.storage.claim`` like on ``qtasks_worker``. So a task ends with the same status, the
same error history and the same row in a test as in production.

Running in the caller's thread also means running on the caller's database
connection, so a task sees the test's data inside a test case's transaction.
"""

from __future__ import annotations

import threading
import uuid as uuid_lib
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.utils import timezone

from django_qtasks.models import TaskStatus
from django_qtasks.worker.timelimit import Timekeeper
from django_qtasks.worker.worker import ThreadWorker

if TYPE_CHECKING:
    from django_qtasks.api.queue_tasks import BaseQueueTasks
    from django_qtasks.values import Task
    from django_qtasks.worker.completer import Done

_timekeeper: Timekeeper | None = None
_timekeeper_lock = threading.Lock()


def shared_timekeeper() -> Timekeeper:
    """The process's Timekeeper for tasks run inline: one daemon thread, started on first
    use, that sleeps until a sync task with ``max_time`` runs (it serves every thread)."""
    global _timekeeper
    with _timekeeper_lock:
        if _timekeeper is None:
            _timekeeper = Timekeeper()
            _timekeeper.start()
        return _timekeeper


def in_callers_atomic(alias: str) -> bool:
    """True inside a ``transaction.atomic()`` block of the caller's own, as opposed to the
    blocks a ``TestCase`` (or pytest-django's ``db`` fixture) wraps each test in: those
    never commit, so waiting for them would run nothing."""
    return any(
        not getattr(block, "_from_testcase", False) for block in connections[alias].atomic_blocks
    )


class InlineWorker(ThreadWorker):
    """A worker that runs claimed tasks one at a time in the calling thread.

    It starts no threads and sends no heartbeat: nothing else can take its tasks
    while it holds them, since it holds them only while the caller waits.
    """

    def __init__(self, app: BaseQueueTasks, *, worker_id: str | None = None) -> None:
        super().__init__(app, queues=None, concurrency=1, burst=True, worker_id=worker_id)
        self.timekeeper = shared_timekeeper()

    def _executed(self, done: Done) -> None:
        """Store the outcome now, in this thread, instead of handing it to the
        completer's thread (nothing is claimed ahead here: there is no next task)."""
        self.completer.store([done])

    def run(self, stop: threading.Event, force: threading.Event, grace: float) -> bool:
        raise TypeError("InlineWorker runs tasks for its caller; it is not a QTASKS['WORKER'].")

    def run_task(
        self, uuid: uuid_lib.UUID, *, retries: bool = True, exclude: Collection[str] = ()
    ) -> Task | None:
        """Claim one waiting task, whatever its ``run_after``, and run it (see
        :meth:`run_claimed`). ``None`` if it was not waiting or its queue is excluded."""
        claimed = self.broker.storage.claim(self.worker_id, None, 1, exclude=exclude, uuids=[uuid])
        return self.run_claimed(claimed[0], retries=retries) if claimed else None

    def run_claimed(self, task: Task, *, retries: bool = True) -> Task:
        """Run a task this worker claimed and return it as stored. With ``retries``, a
        failed attempt that may be retried runs again at once, the backoff skipped,
        until the task is finished; without, it is left in ``retry``."""
        broker = self.broker
        while True:
            self.process(task)
            stored = broker.storage.get(task.uuid)
            if stored is None or not retries or stored.status != TaskStatus.RETRY:
                return stored or task
            claimed = broker.storage.claim(self.worker_id, None, 1, uuids=[task.uuid])
            if not claimed:
                return stored
            task = claimed[0]

    def claim_next(self, queues: Sequence[str] | None, limit: int = 1) -> list[Task]:
        """The next ready tasks in claim order, as a worker would claim them (paused
        queues are left alone)."""
        paused = self.broker.paused_queues()
        return self.broker.storage.claim(self.worker_id, queues, limit, exclude=paused)


def run_immediately(app: BaseQueueTasks, tasks: list[Task]) -> list[Task]:
    """Immediate mode, after ``tasks`` were stored: run them in this thread and return
    them as stored. Inside the caller's ``transaction.atomic()``, they run when it
    commits (``transaction.on_commit``), as a worker would only see them then, and the
    snapshots come back unchanged."""
    alias = app.settings.database
    if in_callers_atomic(alias):
        uuids = [task.uuid for task in tasks]
        transaction.on_commit(_runner(app, uuids), using=alias)
        return tasks
    return _run(app, tasks)


def run_flow_immediately(
    app: BaseQueueTasks, stages: tuple[tuple[Task, ...], ...]
) -> tuple[tuple[Task, ...], ...]:
    """Immediate mode, after a chain or group was stored: run its stages in order, each
    once the one before released it (a stage cancelled by a failure before it does not
    run), and return the tasks as stored. Inside the caller's ``transaction.atomic()``,
    when it commits, as for :func:`run_immediately`."""
    uuids = [[task.uuid for task in stage] for stage in stages]

    def run() -> None:
        for stage in uuids:
            found = [task for task in map(app.broker.storage.get, stage) if task is not None]
            _run(app, [task for task in found if task.status == TaskStatus.NEW])

    if in_callers_atomic(app.settings.database):
        transaction.on_commit(run, using=app.settings.database)
        return stages
    run()
    return tuple(
        tuple(app.broker.storage.get(task.uuid) or task for task in stage) for stage in stages
    )


def _runner(app: BaseQueueTasks, uuids: list[uuid_lib.UUID]) -> Callable[[], Any]:
    def run() -> None:
        tasks = [task for task in map(app.broker.storage.get, uuids) if task is not None]
        _run(app, tasks)

    return run


def _run(app: BaseQueueTasks, tasks: list[Task]) -> list[Task]:
    """Run what is due now; a task with a future ``run_after`` keeps waiting, as it would
    in a worker's queue (run it with ``django_qtasks.testing.run_task``)."""
    worker = InlineWorker(app)
    paused = app.paused_queues()
    now = timezone.now()
    done = []
    for task in tasks:
        ran = None if task.run_after > now else worker.run_task(task.uuid, exclude=paused)
        done.append(ran or task)
    return done
