"""Connection hygiene for the worker's long-lived threads.

Django closes connections at the end of each web request; a worker thread has no
requests, so it keeps one connection for its life and mends it here after errors.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, InterfaceError, OperationalError, connections

# MariaDB/MySQL: InnoDB rolled the whole transaction back; running it again is right.
DEADLOCK = 1213
LOCK_WAIT_TIMEOUT = 1205

# Connection-level errors: the database (or the network to it) ended the session, not
# the statement. The exact list is in docs/reliability.md#database-faults.
# PostgreSQL SQLSTATEs: class 08 (connection exception) and these of class 57.
PG_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})  # admin shutdown, crash, starting
# MariaDB/MySQL error numbers: can't connect (2002, 2003), server gone away (2006), lost
# connection (2013, 2055), connection killed (1927), server shutting down (1053),
# disconnected for inactivity (4031).
MYSQL_SESSION_ENDED = frozenset({1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031})

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


def is_connection_lost(exc: BaseException, alias: str) -> bool:
    """Whether ``exc`` says that the database cut the connection of ``alias`` in this
    thread (terminated, restarting, the network gone), rather than refused a
    statement: the run was lost to the environment, not failed by the task.

    Only Django's ``OperationalError`` and ``InterfaceError`` count, and only when this
    thread's connection of ``alias`` saw an error (Django flags it, ``errors_occurred``):
    an error of another database the task uses is the task's own. Integrity, data and
    programming errors never count, nor a timeout, deadlock or serialization failure.
    """
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return False
    connection = connections[alias]
    if not connection.errors_occurred:
        return False
    if isinstance(exc, InterfaceError):  # a query on a connection that died earlier
        return True
    cause = exc.__cause__
    if connection.vendor == "postgresql":
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if state is None:  # no SQLSTATE: libpq lost the server (psycopg's own error)
            return cause is not None
        return str(state).startswith("08") or state in PG_SESSION_ENDED
    if connection.vendor == "mysql":
        return mysql_error_code(exc) in MYSQL_SESSION_ENDED
    return False
