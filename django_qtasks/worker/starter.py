"""Starter: starts the Worker and the Broker, and stops them in reverse order.

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
from types import FrameType

from django_qtasks.broker.broker import BaseBroker
from django_qtasks.signals import component_started, component_stopped
from django_qtasks.worker.worker import BaseWorker

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
