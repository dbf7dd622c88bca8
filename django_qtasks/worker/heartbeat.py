"""The worker's pulse: heartbeats, the rescuer, pruning and cancel requests, on their own
thread; it also starts and stops the worker's scheduler (periodic tasks).

Task code never runs on this thread, so a busy task cannot make its worker look
dead; its own database connection means a slow query elsewhere does not delay it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.db import DatabaseError, connections
from django.utils import timezone

from django_qtasks.broker.broker import BaseBroker
from django_qtasks.settings import QTasksSettings
from django_qtasks.worker.dbretry import DatabaseRetry
from django_qtasks.worker.faults import FailureStreak

if TYPE_CHECKING:
    from django_qtasks.worker.scheduler import Scheduler

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
        on_beat: Callable[[], None] = lambda: None,
        scheduler: Scheduler | None = None,
        heartbeat_file: str | None = None,
        retry: DatabaseRetry | None = None,
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
        self.on_beat = on_beat  # after each database heartbeat: the worker's counters flush
        self.heartbeat_file = heartbeat_file
        self.scheduler = scheduler  # periodic tasks; on a thread of its own
        # The worker's: an outage is logged once per worker, whichever thread meets it.
        self.retry = retry or DatabaseRetry.for_settings(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qtasks-heartbeat", daemon=True)
        self._next_rescue = 0.0
        self.faults = FailureStreak("The heartbeat", logger, action="heartbeat_loop_failed")

    def start(self) -> None:
        """Register at once (before the first claim), then keep beating in the background."""
        self.beat()
        self.touch()
        self.on_paused(self.broker.paused_queues())
        self._thread.start()
        if self.scheduler is not None:
            self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self) -> None:
        info = {**self.info, "last_beat": timezone.now().isoformat(), "running": self.running()}
        self.broker.heartbeat(self.worker_id, info, ttl=self.settings.heartbeat_timeout)

    def touch(self) -> None:
        """Update the heartbeat file's mtime (``--heartbeat-file``): a liveness probe reads
        its age. Called only after a heartbeat reached the database, so a worker that
        lost its database, or whose heartbeat thread is stuck, lets the file go stale."""
        if self.heartbeat_file is None:
            return
        try:
            Path(self.heartbeat_file).touch()
        except OSError:
            logger.warning(
                "Could not touch the heartbeat file %s",
                self.heartbeat_file,
                exc_info=True,
                extra={"action": "heartbeat_file_failed"},
            )

    def tick(self) -> None:
        """One round: beat, relay cancel requests, and rescue when it is time."""
        self.beat()
        self.on_beat()
        self.touch()
        self.on_paused(self.broker.paused_queues())
        if self.running():
            requested = self.broker.storage.cancel_requests(self.worker_id)
            if requested:
                self.on_cancel(requested)
        now = time.monotonic()
        if now >= self._next_rescue:
            self._next_rescue = now + self.settings.rescue_interval
            self.broker.storage.rescue()
            self.broker.forget_dead_workers()
            if self.settings.prune_after is not None:
                self.prune()

    def prune(self) -> int:
        """``QTASKS["PRUNE_AFTER"]``: one bounded batch of old finished tasks (and of old
        schedule runs) per rescue pass; see docs/retention.md."""
        assert self.settings.prune_after is not None
        before = timezone.now() - dt.timedelta(seconds=self.settings.prune_after)
        limit = self.settings.prune_batch_size
        deleted = self.broker.storage.prune(before, limit=limit)
        self.broker.storage.prune_schedule_runs(before, limit=limit)
        return deleted

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.settings.heartbeat_interval):
                try:
                    self.tick()
                except DatabaseError:
                    self.retry.failed(
                        "Heartbeat failed; reconnecting on the next beat",
                        action="heartbeat_failed",
                    )
                except Exception:
                    # Not the database's (a bug, a plug-in's): logged once per streak,
                    # and the thread beats on; a pause before the next beat as well.
                    self._stop.wait(self.faults.failed())
                else:
                    self.retry.reached()
                    self.faults.succeeded()
        finally:
            connections.close_all()
