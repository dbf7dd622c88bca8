"""The worker's pulse: heartbeats, the rescuer and cancel requests, on their own thread.

Task code never runs on this thread, so a busy task cannot make its worker look
dead; its own database connection means a slow query elsewhere does not delay it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from django.db import DatabaseError, connections
from django.utils import timezone

from .broker import BaseBroker
from .db import reset_connection
from .settings import QTasksSettings

logger = logging.getLogger("django_qtasks.heartbeat")


class Heartbeat:
    """Refreshes this worker's row in GlobalConfig, rescues lost tasks, relays cancels."""

    def __init__(
        self,
        *,
        broker: BaseBroker,
        settings: QTasksSettings,
        worker_id: str,
        info: dict[str, Any],
        running: Callable[[], int],
        on_cancel: Callable[[set[UUID]], None],
        on_paused: Callable[[set[str]], None] = lambda queues: None,
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.worker_id = worker_id
        self.info = {
            **info,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": timezone.now().isoformat(),
        }
        self.running = running
        self.on_cancel = on_cancel
        self.on_paused = on_paused
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qtasks-heartbeat", daemon=True)
        self._next_rescue = 0.0

    def start(self) -> None:
        """Register at once (before the first claim), then keep beating in the background."""
        self.beat()
        self.on_paused(self.broker.paused_queues())
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self) -> None:
        info = {**self.info, "last_beat": timezone.now().isoformat(), "running": self.running()}
        self.broker.heartbeat(self.worker_id, info, ttl=self.settings.heartbeat_timeout)

    def tick(self) -> None:
        """One round: beat, relay cancel requests, and rescue when it is time."""
        self.beat()
        self.on_paused(self.broker.paused_queues())
        if self.running():
            requested = self.broker.cancel_requests(self.worker_id)
            if requested:
                self.on_cancel(requested)
        now = time.monotonic()
        if now >= self._next_rescue:
            self._next_rescue = now + self.settings.rescue_interval
            self.broker.rescue()
            self.broker.forget_dead_workers()

    def _run(self) -> None:
        alias = self.settings.database
        try:
            while not self._stop.wait(self.settings.heartbeat_interval):
                try:
                    self.tick()
                except DatabaseError:
                    logger.warning(
                        "Heartbeat failed; reconnecting on the next beat",
                        exc_info=True,
                        extra={"action": "heartbeat_failed"},
                    )
                    reset_connection(alias)
        finally:
            connections.close_all()
