"""Riding out a database that went away, for the worker's claim loop, completer and
heartbeat.

A dropped connection, a failover or a restart must not stop a worker: it drops the
broken connection (the next query opens a new one) and tries again after a backoff.
What is safe to retry, and for how long, is decided here once (docs/reliability.md).

An outage is logged once per worker, here: every thread of a worker fails on its own
connection when the database restarts (the claim loop, the completer, the heartbeat,
each running task), so per-operation warnings would say the same thing dozens of
times. The first failure is one WARNING naming the cause, the first success after it
one INFO saying how long it lasted; the operations' own lines are DEBUG meanwhile.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import InterfaceError, OperationalError

from django_qtasks.storage.db import is_connection_lost, reset_connection

if TYPE_CHECKING:
    from django_qtasks.settings import QTasksSettings

logger = logging.getLogger("django_qtasks.worker")

MAX_DB_BACKOFF = 30.0  # seconds between failed claims, at most
FIRST_WRITE_DELAY = 0.05  # seconds before the first retry of a write
MAX_WRITE_DELAY = 2.0

T = TypeVar("T")


class DatabaseRetry:
    """Backoffs, reconnects and the outage log of one worker on one database alias,
    shared by the worker's threads.

    ``patience`` is how long a write is retried (the heartbeat timeout: past it, the
    worker's tasks are rescued elsewhere anyway, so retrying longer gains nothing)."""

    def __init__(self, alias: str, *, poll_interval: float, patience: float) -> None:
        self.alias = alias
        self.poll_interval = poll_interval
        self.patience = patience
        self._lock = threading.Lock()
        self._down_since: float | None = None  # monotonic; None while the database answers
        self._failures = 0  # failed operations in the current outage
        # Outages so far. Each thread notes how many there had been when its connection
        # was opened (0: before any), to tell a new outage from a connection that died
        # in the last one and is only now used again.
        self._outages = 0
        self._threads = threading.local()
        # The last outage was ended by a connection older than it: proof enough that
        # the database answers (one session cut by pg_terminate_backend()), but during
        # a restart such a session may still answer while the server stops. Until a
        # connection opened since answers too, a failure of one opened in that outage
        # (a retry's) goes on with it, without a second WARNING or INFO.
        self._ended_by_old = False
        self._quiet_end = False
        self._last_down_since = 0.0

    @classmethod
    def for_settings(cls, settings: QTasksSettings, *, poll_interval: float = 1.0) -> DatabaseRetry:
        """The retry of a worker on the queue's database: it gives up waiting once its
        rows would be rescued anyway (``HEARTBEAT_TIMEOUT``)."""
        patience = settings.heartbeat_timeout
        return cls(settings.database, poll_interval=poll_interval, patience=patience)

    @property
    def down(self) -> bool:
        """Whether the worker is in an outage: a connection was lost, nothing has
        succeeded since."""
        return self._down_since is not None

    def reset(self) -> None:
        """Drop the connection after a database error; the next query opens a new one."""
        reset_connection(self.alias)
        self._threads.opened_in = self._outages

    def reached(self) -> None:
        """A database operation of this thread succeeded: the end of an outage, if one
        was on. Cheap otherwise (it is on the claim and completion paths)."""
        opened = getattr(self._threads, "opened_in", None)
        if opened is None:  # this thread's first success: its connection works now
            opened = self._threads.opened_in = self._outages - (self._down_since is not None)
        fresh = opened >= self._outages
        if self._down_since is None:
            if fresh and self._ended_by_old:
                self._ended_by_old = False  # a connection opened since answers: it is over
            return
        with self._lock:
            if self._down_since is None:
                return
            lasted = time.monotonic() - self._down_since
            failures, self._down_since = self._failures, None
            quiet, self._quiet_end = self._quiet_end, False
            self._ended_by_old = not fresh
        if quiet:
            return
        logger.info(
            "Database reachable again after %.1f s (%d failed operation(s) retried meanwhile)",
            lasted,
            failures,
            extra={"action": "database_reachable", "duration": lasted, "count": failures},
        )

    def failed(self, message: str, *args: object, action: str, **fields: Any) -> None:
        """After a failed database operation, in its ``except`` block: drop the
        connection and log. A lost connection (the list is in docs/reliability.md) is
        part of an outage, logged once; the operation's own ``message`` (with the
        traceback) is DEBUG then. Any other database error is the operation's own
        WARNING."""
        exc = sys.exc_info()[1]
        lost = exc is not None and is_connection_lost(exc, self.alias)
        if exc is not None and lost:
            self._outage(_cause(exc))
        self.reset()
        logger.log(
            logging.DEBUG if lost else logging.WARNING,
            message,
            *args,
            exc_info=True,
            extra={"action": action, **fields},
        )

    def lost_run(self, cause: str) -> None:
        """A task's run on this thread was lost to a cut connection: the same outage
        as the worker's own failures (its rescue is logged at INFO)."""
        self._outage(cause)
        self.reset()

    def _outage(self, cause: str) -> None:
        """Count a lost connection; the first of an outage is a WARNING. A connection
        opened before the last outage died in that one (a restart ends every session):
        its failure belongs to it and opens none."""
        with self._lock:
            first = False
            if self._down_since is None:
                if getattr(self._threads, "opened_in", 0) < self._outages:
                    return  # the last outage's dead connection, now used again
                if self._ended_by_old:
                    # A retry's connection fails after a dying session had answered: the
                    # same outage goes on, already logged.
                    self._ended_by_old, self._quiet_end = False, True
                    self._down_since = self._last_down_since
                else:
                    self._failures = 0
                    self._down_since = self._last_down_since = time.monotonic()
                    self._outages += 1
                    first = True
            self._failures += 1
        if first:
            logger.warning(
                "Database unreachable (%s); retrying until it answers",
                cause,
                extra={"action": "database_unreachable", "error": cause},
            )

    def after_failed_claim(self, failures: int, stop: threading.Event) -> None:
        """Reconnect and wait ``poll_interval * 2**failures`` (at most 30 s, cut short by
        ``stop``) before the next claim. Called from an ``except`` block."""
        delay = min(MAX_DB_BACKOFF, self.poll_interval * 2**failures)
        self.failed(
            "Claiming failed (database error); retrying in %.1f s", delay, action="claim_failed"
        )
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
                result = call()
            except (OperationalError, InterfaceError):
                self.failed(
                    "Storing the outcome of task(s) %s failed; retrying in %.2f s",
                    _shown(task_uuids),
                    delay,
                    action="finish_failed",
                    task_uuids=task_uuids,
                )
                if time.monotonic() + delay > deadline:
                    logger.error(
                        "Giving up storing the outcome of task(s) %s; they will be rescued",
                        _shown(task_uuids),
                        extra={"action": "finish_abandoned", "task_uuids": task_uuids},
                    )
                    return None
                time.sleep(delay)
                delay = min(delay * 2, MAX_WRITE_DELAY)
            else:
                self.reached()
                return result


def _cause(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, for the outage line."""
    text = str(exc).strip().split("\n", 1)[0]
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _shown(names: list[str], shown: int = 10) -> str:
    """Task uuids for a log line: the first ``shown``, then how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
