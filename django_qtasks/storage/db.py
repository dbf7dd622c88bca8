"""Connection hygiene for the worker's long-lived threads.

Django closes connections at the end of each web request; a worker thread has no
requests, so it keeps one connection for its life and mends it here after errors.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, connections

# MariaDB/MySQL: InnoDB rolled the whole transaction back; running it again is right.
DEADLOCK = 1213
LOCK_WAIT_TIMEOUT = 1205

logger = logging.getLogger("django_qtasks.db")


def reset_connection(alias: str) -> None:
    """Drop this thread's connection after a database error; the next query reconnects."""
    try:
        connections[alias].close()
    except DatabaseError:
        logger.debug("Closing a broken connection failed", exc_info=True)


def ensure_usable(alias: str) -> None:
    """Before a task on a connection that sat idle: ping it, and drop it if it is dead
    (the database restarted, a proxy cut idle sessions), so the task does not fail on
    it. A connection in steady use is not pinged."""
    connection = connections[alias]
    if connection.connection is not None and not connection.is_usable():
        reset_connection(alias)


def close_if_broken(alias: str) -> None:
    """After an error on this thread's connection, drop it if it no longer answers, so
    the next task starts on a fresh one instead of failing on a dead socket."""
    connection = connections[alias]
    if connection.connection is not None and connection.errors_occurred:
        connection.errors_occurred = False
        if not connection.is_usable():
            reset_connection(alias)


def mysql_error_code(exc: BaseException) -> int | None:
    """The server's error number of a MariaDB/MySQL error (Django keeps the driver's
    exception as the cause), or None."""
    for candidate in (exc, exc.__cause__):
        args = getattr(candidate, "args", ())
        if args and isinstance(args[0], int):
            return args[0]
    return None


def is_lock_conflict(exc: BaseException, alias: str) -> bool:
    """Whether ``exc`` is a deadlock or lock wait timeout that the queue may answer by
    running its own transaction again: only outside a caller's ``atomic()``, whose
    whole transaction InnoDB rolled back and only the caller can redo."""
    return (
        connections[alias].vendor == "mysql"
        and not connections[alias].in_atomic_block
        and mysql_error_code(exc) in (DEADLOCK, LOCK_WAIT_TIMEOUT)
    )
