"""Starter: starts the Worker and the Broker, and stops them in reverse order.

It owns the process's signals. The first SIGTERM/SIGINT stops claiming and lets
running tasks finish within the grace period; a second one leaves at once (the
tasks still running are picked up again later: see docs/reliability.md).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from .broker import BaseBroker
from .signals import component_started, component_stopped
from .worker import BaseWorker

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

    def start(self) -> None:
        component_started.send(sender=type(self), component=self, name=self.component_name)
        self.worker.start()
        self.broker.start()

    def stop(self) -> None:
        self.broker.stop()
        self.worker.stop()
        component_stopped.send(sender=type(self), component=self, name=self.component_name)

    def request_stop(self) -> None:
        """Stop claiming; running tasks may finish. Safe from any thread."""
        self.stop_event.set()

    def run(self, *, install_signals: bool = True) -> int:
        """Run until stopped; 0 when every running task finished, 1 otherwise."""
        if install_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)
        self.start()
        clean = True
        try:
            self.worker.run(self.stop_event)
            self.stop_event.set()
            clean = self._drain()
        finally:
            self.stop()
        logger.info("Worker %s stopped%s", self.worker.worker_id, "" if clean else " (forced)")
        return 0 if clean else 1

    def _drain(self) -> bool:
        """Wait for running tasks until they finish, the grace passes, or a second signal."""
        logger.info("Stopping: waiting up to %g s for running tasks", self.grace)
        deadline = time.monotonic() + self.grace
        while not self.force_event.is_set():
            remaining = deadline - time.monotonic()
            if self.worker.drain(min(0.2, max(remaining, 0.0))):
                return True
            if remaining <= 0:
                return False
        return False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop_event.is_set():
            logger.warning("%s again: leaving now", name)
            self.force_event.set()
            return
        logger.info("%s: no new tasks; finishing the running ones", name)
        self.stop_event.set()
