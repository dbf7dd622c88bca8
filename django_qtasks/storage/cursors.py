"""The PostgreSQL cursors of the hot paths: parameters bound on the server, and
statements prepared once per session.

Django binds parameters on the client by default (psycopg quotes them into the SQL
text, in Python) and never prepares. Both are right for ordinary queries and cost
the few statements that run thousands of times a second. The cursors made here are
wrapped as Django wraps its own, so their errors are Django's, and query logging,
``assertNumQueries`` and execute wrappers see their statements.
"""

from __future__ import annotations

import functools
from typing import Any

from django.db import connections

# psycopg numbers the statements it prepares; it prepares one only when asked to, or
# after this many runs (Django turns preparing off with None). Ours always ask.
_ONLY_WHEN_ASKED = 2**31 - 1


def session_state_wanted(setting: bool | str, alias: str) -> bool:
    """Whether a feature that keeps state in the server session (LISTEN, prepared
    statements) is on for database ``alias``, given its ``True``/``False``/``"auto"``
    setting. It needs PostgreSQL. ``"auto"`` turns it off where the alias says a pooler
    in transaction mode (PgBouncer) sits in front: such a pooler hands the session to
    other clients between transactions (a LISTEN's notifications would go to a
    stranger, or nowhere, and the worker wait a whole poll for nothing; polling is
    always correct, only slower). Django's documented sign of that pooler is
    ``DISABLE_SERVER_SIDE_CURSORS = True``."""
    connection = connections[alias]
    if connection.vendor != "postgresql" or setting is False:
        return False
    return setting is True or not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS", False)


def server_bound_cursor(connection: Any) -> Any:
    """A cursor that sends the parameters apart from the SQL (the extended protocol
    with an unnamed statement, which transaction poolers pass through): no quoting of
    every element of every array into the SQL text. psycopg 2 binds on the client only,
    so there it is Django's own cursor."""
    cursor_class = _cursor_classes()[0]
    if cursor_class is None:
        return connection.cursor()
    return _django_cursor(connection, cursor_class)


def prepared_cursor(connection: Any) -> Any:
    """A cursor whose statements PostgreSQL parses and plans once per session, then
    only runs: for a one-row INSERT of a task that is most of the server's work before
    the commit. psycopg keeps the statements (and forgets them where it must: after a
    ROLLBACK, a DISCARD ALL). Only where :func:`session_state_wanted` says so: a prepared
    statement lives in the server session.

    Where Django logs queries (DEBUG, assertNumQueries) the statement runs unprepared:
    psycopg keeps no text of a prepared run, so Django would log it without its SQL
    (as None on Django 5.2); speed is not what such a connection is for."""
    cursor_class = _cursor_classes()[1]
    if cursor_class is None or connection.queries_logged:
        return server_bound_cursor(connection)
    cursor = _django_cursor(connection, cursor_class)
    raw = connection.connection  # after the health check, which may have replaced it
    if raw.prepare_threshold is None:
        # Django's default: preparing off for the whole connection. Let our explicit
        # requests through; every other query still runs unprepared.
        raw.prepare_threshold = _ONLY_WHEN_ASKED
    return cursor


def _django_cursor(connection: Any, cursor_class: Any) -> Any:
    """A ``cursor_class`` cursor made the way Django makes its own
    (``BaseDatabaseWrapper._cursor``): a persistent connection that died since the
    last request is replaced first (``CONN_HEALTH_CHECKS``), then the connection is
    opened if need be, and the cursor wrapped for logging and execute wrappers."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        return connection._prepare_cursor(cursor_class(connection.connection))


@functools.cache
def _cursor_classes() -> tuple[Any, Any]:
    """Django's server-binding cursor, and one that asks psycopg to prepare each
    statement; ``(None, None)`` on psycopg 2, which has neither."""
    try:
        from django.db.backends.postgresql.base import ServerBindingCursor
    except ImportError:
        return None, None

    class PreparingCursor(ServerBindingCursor):
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            return super().execute(query, params, prepare=True, **kwargs)  # type: ignore[misc]

    return ServerBindingCursor, PreparingCursor


def kept_cursor(connection: Any, *, prepare: bool) -> Any:
    """A cursor kept on ``connection`` (this thread's) for a statement that runs on
    every call of a hot path, made once per database session: a new psycopg cursor
    looks up the dumper of every parameter again (about 30 µs for the 18 of an
    ``add_task()`` INSERT, a tenth of the whole call), a kept one remembers them.
    The health check and reconnect run on each call as for a new cursor; a new
    session (or query logging switched on or off) gets a new cursor. Do not close it."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    key = (connection.connection, prepare, connection.queries_logged)
    kept = getattr(connection, "_qtasks_kept_cursor", None)
    if kept is not None and kept[0] == key:
        return kept[1]
    cursor = prepared_cursor(connection) if prepare else connection.cursor()
    connection._qtasks_kept_cursor = (key, cursor)
    return cursor
