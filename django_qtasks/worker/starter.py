"""Starter: starts the Worker and the Broker, and stops them in reverse order; and
:func:`build_starter`, which builds the worker side of one process.

It owns the process's signals. The first SIGTERM/SIGINT stops claiming and lets
running tasks finish within the grace period; a second one leaves at once. Either
way, tasks that did not finish are handed back for other workers (see
docs/reliability.md).
"""

from __future__ import annotations

import itertools
import logging
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from django_qtasks.api.options import validate_queue
from django_qtasks.broker.broker import BaseBroker
from django_qtasks.settings import import_component
from django_qtasks.signals import component_started, component_stopped
from django_qtasks.worker.pool import ProcessPoolWorker
from django_qtasks.worker.scheduler import collect_schedules
from django_qtasks.worker.worker import BaseWorker

if TYPE_CHECKING:
    from django_qtasks.api.queue_tasks import BaseQueueTasks

logger = logging.getLogger("django_qtasks.starter")


class Starter:
    """Start order: Worker, Broker (-> Storage -> GlobalConfig). Stop: the reverse."""

    component_name = "starter"

    def __init__(self, *, worker: BaseWorker, broker: BaseBroker, grace: float) -> None:
        self.worker = worker
        self.broker = broker
        self.grace = grace
        self.stop_event = threading.Event()
        self.force_event = threading.Event()
        self._signals = itertools.count()

    def start(self) -> None:
        component_started.send(sender=type(self), component=self, name=self.component_name)
        self.worker.start()
        self.broker.start()

    def stop(self) -> None:
        self.broker.stop()
        self.worker.stop()
        component_stopped.send(sender=type(self), component=self, name=self.component_name)

    def request_stop(self, *, force: bool = False) -> None:
        """Stop claiming (and with ``force``, stop waiting for running tasks)."""
        self.stop_event.set()
        if force:
            self.force_event.set()

    def run(
        self,
        *,
        install_signals: bool = True,
        signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
    ) -> int:
        """Run until stopped; 0 when every claimed task finished, 1 otherwise."""
        if install_signals and threading.current_thread() is threading.main_thread():
            for signum in signals:
                # A signal ignored by whoever started us (nohup, `cmd &`) stays ignored.
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    signal.signal(signum, self._on_signal)
        self.start()
        clean = False
        try:
            clean = self.worker.run(self.stop_event, self.force_event, self.grace)
        finally:
            self.stop()
        logger.info(
            "Worker %s stopped%s",
            self.worker.worker_id,
            "" if clean else "; unfinished tasks were handed back",
        )
        return 0 if clean else 1

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # next() on a count is one step, so a signal that interrupts this handler (they
        # nest) still counts as the second; the events are set before anything logs.
        second = next(self._signals) > 0
        self.request_stop(force=second)
        name = signal.Signals(signum).name
        if second:
            logger.warning("%s again: leaving now", name)
        else:
            logger.info("%s: no new tasks; finishing the running ones", name)


def build_starter(
    app: BaseQueueTasks,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int | None = None,
    burst: bool = False,
    poll_interval: float | None = None,
    grace: float | None = None,
    processes: int | None = None,
    max_tasks_per_child: int | None = None,
    verbosity: int = 1,
    worker_class: type[BaseWorker] | None = None,
    worker_options: dict[str, Any] | None = None,
) -> Starter:
    """The Starter for one worker process: the Worker and ``app``'s Broker (what
    ``app.build_starter()`` and ``qtasks_worker`` call).

    With ``processes``, the Worker is a :class:`~django_qtasks.worker.pool.ProcessPoolWorker`
    supervising that many children; otherwise ``worker_class``, else the
    ``QTASKS['WORKER']`` class.
    """
    settings = app.settings
    for queue in queues or ():
        validate_queue(queue, settings.queues)
    if not burst:
        collect_schedules(app)  # a bad schedule stops the worker before it starts
    grace = settings.grace if grace is None else grace
    options: dict[str, Any] = {
        "queues": list(queues) if queues else None,
        "concurrency": concurrency or settings.concurrency,
        "burst": burst,
        "poll_interval": settings.poll_interval if poll_interval is None else poll_interval,
        **(worker_options or {}),
    }
    if processes:
        worker_class = ProcessPoolWorker
        options.update(
            processes=processes,
            max_tasks_per_child=max_tasks_per_child,
            grace=grace,
            verbosity=verbosity,
        )
    elif worker_class is None:
        worker_class = import_component(settings, "worker", BaseWorker)
    worker = worker_class(app, **options)
    starter_cls = import_component(settings, "starter", Starter)
    starter: Starter = starter_cls(worker=worker, broker=app.broker, grace=grace)
    return starter
