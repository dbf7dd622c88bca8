"""Riding out a database that went away, for the worker's claim loop and completer.

A dropped connection, a failover or a restart must not stop a worker: it drops the
broken connection (the next query opens a new one) and tries again after a backoff.
What is safe to retry, and for how long, is decided here once (docs/reliability.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError

from django_qtasks.storage.db import reset_connection

logger = logging.getLogger("django_qtasks.worker")

MAX_DB_BACKOFF = 30.0  # seconds between failed claims, at most
FIRST_WRITE_DELAY = 0.05  # seconds before the first retry of a write
MAX_WRITE_DELAY = 2.0

T = TypeVar("T")


class DatabaseRetry:
    """Backoffs and reconnects on one database alias.

    ``patience`` is how long a write is retried (the heartbeat timeout: past it, the
    worker's tasks are rescued elsewhere anyway, so retrying longer gains nothing)."""

    def __init__(self, alias: str, *, poll_interval: float, patience: float) -> None:
        self.alias = alias
        self.poll_interval = poll_interval
        self.patience = patience

    def reset(self) -> None:
        """Drop the connection after a database error; the next query opens a new one."""
        reset_connection(self.alias)

    def after_failed_claim(self, failures: int, stop: threading.Event) -> None:
        """Reconnect and wait ``poll_interval * 2**failures`` (at most 30 s, cut short by
        ``stop``) before the next claim. Called from an ``except`` block: it logs the
        traceback."""
        delay = min(MAX_DB_BACKOFF, self.poll_interval * 2**failures)
        logger.warning(
            "Claiming failed (database error); retrying in %.1f s",
            delay,
            exc_info=True,
            extra={"action": "claim_failed"},
        )
        self.reset()
        stop.wait(delay)

    def write(self, call: Callable[[], T], task_uuids: list[str]) -> T | None:
        """``call()``, retried through lost connections for ``patience`` seconds; None
        when it gave up. Only for writes that are safe to repeat (changing only rows
        this worker still holds, so a retry after a lost reply overwrites nothing).
        ``task_uuids`` name the tasks in the log lines. Other database errors are the
        caller's."""
        deadline = time.monotonic() + self.patience
        delay = FIRST_WRITE_DELAY
        while True:
            try:
                return call()
            except (OperationalError, InterfaceError):
                logger.warning(
                    "Storing the outcome of task(s) %s failed; retrying in %.2f s",
                    _shown(task_uuids),
                    delay,
                    exc_info=True,
                    extra={"action": "finish_failed", "task_uuids": task_uuids},
                )
                self.reset()
                if time.monotonic() + delay > deadline:
                    logger.error(
                        "Giving up storing the outcome of task(s) %s; they will be rescued",
                        _shown(task_uuids),
                        extra={"action": "finish_abandoned", "task_uuids": task_uuids},
                    )
                    return None
                time.sleep(delay)
                delay = min(delay * 2, MAX_WRITE_DELAY)


def _shown(names: list[str], shown: int = 10) -> str:
    """Task uuids for a log line: the first ``shown``, then how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
