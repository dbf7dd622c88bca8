"""PostgreSQL LISTEN: how an idle worker learns at once that a task was enqueued.

The enqueue side needs nothing: a trigger (migration 0004) sends one NOTIFY per
INSERT statement, delivered when the enqueuing transaction commits. The listener
holds one extra connection per worker process, outside Django's connection
handling (it lives across threads and never runs queries). Polling stays the
fallback: a lost connection, SQLite, or a pooler in transaction mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from typing import Any

from django.db import connections

from django_qtasks.storage.interface import CHANNEL

logger = logging.getLogger("django_qtasks.listener")
RETRY_AFTER = 5.0  # seconds before a lost listener connection is tried again


class Listener:
    """Waits for the enqueue trigger's notifications on a connection of its own."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._conn: Any = None
        self._broken_until = 0.0
        # Once LISTEN has worked, a failure is the database's outage, which the worker
        # logs once: these lines stay quiet then (a warning every RETRY_AFTER otherwise).
        self._listened = False

    def _connect(self) -> Any:
        import psycopg

        params = dict(connections[self.alias].get_connection_params())
        for django_only in ("cursor_factory", "context", "prepare_threshold"):
            params.pop(django_only, None)
        conn = psycopg.connect(**params, autocommit=True)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def wait(self, timeout: float, queues: Collection[str] | None) -> bool | None:
        """Block until a task is enqueued in one of ``queues`` (``None``: any), for at
        most ``timeout`` seconds. True: woken; False: timed out; None: not listening
        (the caller should sleep instead)."""
        import psycopg

        now = time.monotonic()
        if self._conn is None:
            if now < self._broken_until:
                return None
            try:
                self._conn = self._connect()
            except psycopg.Error:
                logger.log(
                    logging.DEBUG if self._listened else logging.WARNING,
                    "LISTEN failed; polling instead for now",
                    exc_info=True,
                )
                self._broken_until = now + RETRY_AFTER
                return None
            self._listened = True
            # A task enqueued before LISTEN took effect sent its NOTIFY to nobody: have
            # the caller claim once more now that nothing can slip through.
            return True
        try:
            for note in self._conn.notifies(timeout=timeout):
                if queues is None or not queues or set(note.payload.split(",")) & set(queues):
                    return True
            return False
        except psycopg.Error as exc:
            cause = str(exc).strip().split("\n", 1)[0]
            logger.info("The LISTEN connection broke (%s); polling until it is back", cause)
            logger.debug("The LISTEN connection broke", exc_info=True)
            self.close()
            self._broken_until = time.monotonic() + RETRY_AFTER
            return None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
