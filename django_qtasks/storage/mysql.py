"""Storage on MariaDB 10.6+ and MySQL 8.0+: the statements that differ from PostgreSQL's.

What the two lack, and what stands in for it here (docs/databases.md):

- ``UPDATE ... RETURNING`` (MariaDB has it for INSERT and DELETE only, MySQL not at all):
  a claim is ``SELECT ... FOR UPDATE SKIP LOCKED`` of a batch, then an ``UPDATE`` of
  those rows by primary key, in one short transaction. The locked rows cannot change
  in between, so what the SELECT read is what the UPDATE changed.
- Partial and expression indexes: migration 0008 adds virtual generated columns that
  are non-NULL only for the rows the partial index would hold, and indexes them. The
  claim reads ``qtasks_claim_priority`` (``-priority`` while waiting, else NULL) in
  index order, so it reads a batch's worth of index entries however many finished rows
  the table holds; the unique key is unique over ``qtasks_active_unique_key`` (the key
  while waiting or running, else NULL; NULLs never collide).
- Advisory locks: the concurrency-limit check takes ``GET_LOCK`` per group.
- LISTEN/NOTIFY: none. Idle workers poll (``POLL_INTERVAL``).

Isolation: every statement here expects READ COMMITTED (Django's default for MySQL):
each statement sees what was committed before it started, and locking reads take no
gap locks, which under REPEATABLE READ would make an enqueue wait for a claim. A
connection set to another level gets READ COMMITTED for the queue's own transactions.
A deadlock (1213) or lock wait timeout (1205) in a transaction of the queue's own is
retried a few times: InnoDB rolled that transaction back whole.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid as uuid_lib
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

from django.db import DatabaseError, IntegrityError, OperationalError, connections, transaction
from django.utils import timezone

from django_qtasks.exceptions import ConfigurationError
from django_qtasks.models import TaskRecord, TaskStatus
from django_qtasks.storage.claim import CLAIM_ATTEMPT
from django_qtasks.storage.concurrency import LOCK_CLASS, lock_key
from django_qtasks.storage.db import DEADLOCK, is_lock_conflict, mysql_error_code
from django_qtasks.storage.django_storage import DjangoStorage
from django_qtasks.storage.rows import _CLAIM_COLUMNS, MAX_ATTEMPT, _as_uuid
from django_qtasks.storage.table import Message
from django_qtasks.values import Task

logger = logging.getLogger("django_qtasks.storage")

# The generated columns of migration 0008 (MariaDB/MySQL only), and their indexes.
CLAIM_COLUMN = "qtasks_claim_priority"
UNIQUE_COLUMN = "qtasks_active_unique_key"
CLAIM_INDEX = "qtasks_my_claim_idx"
UNIQUE_INDEX = "qtasks_my_unique_active_key"

_RETRIES = 5  # attempts of one transaction that InnoDB rolled back for a deadlock
GROUP_LOCK_TIMEOUT = 30  # seconds a concurrency check waits for its group's lock

_T = TypeVar("_T")

# SELECT ... FOR UPDATE SKIP LOCKED came with MariaDB 10.6 and MySQL 8.0.1.
MIN_MARIADB = (10, 6)
MIN_MYSQL = (8, 0)


def version_problem(connection: Any) -> str | None:
    """Why this MariaDB/MySQL server is too old for the queue, or None (it connects)."""
    if connection.mysql_is_mariadb:
        name, minimum = "MariaDB", MIN_MARIADB
    else:
        name, minimum = "MySQL", MIN_MYSQL
    version = tuple(connection.mysql_version[:2])
    if version >= minimum:
        return None
    return (
        f"{name} {'.'.join(map(str, connection.mysql_version))} is too old: django-qtasks "
        f"needs {name} {'.'.join(map(str, minimum))} or newer (for SELECT ... FOR UPDATE "
        "SKIP LOCKED)."
    )


def retry_deadlocks(method: Callable[..., _T]) -> Callable[..., _T]:
    """Run a storage method again when InnoDB rolled its transaction back for a
    deadlock or a lock wait timeout. Only when the method owns its transaction: inside
    a caller's ``atomic()`` the whole transaction is gone, which only the caller can
    redo, so the error goes up."""

    @functools.wraps(method)
    def wrapper(self: MySQLStorage, *args: Any, **kwargs: Any) -> _T:
        for attempt in range(1, _RETRIES + 1):
            try:
                return method(self, *args, **kwargs)
            except OperationalError as exc:
                if not is_lock_conflict(exc, self.alias) or attempt == _RETRIES:
                    raise
                code = mysql_error_code(exc)
                logger.info(
                    "%s: %s, trying again (%d of %d)",
                    method.__name__,
                    "deadlock" if code == DEADLOCK else "lock wait timeout",
                    attempt + 1,
                    _RETRIES,
                    extra={"action": "deadlock_retry", "code": code},
                )
                time.sleep(0.005 * attempt)  # back off a little: the other side finishes
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


def _spent(attempt: Any) -> Any:
    """A row's attempt after the claim's UPDATE (CLAIM_ATTEMPT)."""
    return attempt + 1 if isinstance(attempt, int) and attempt < MAX_ATTEMPT else attempt


class MySQLStorage(DjangoStorage):
    """:class:`~django_qtasks.storage.DjangoStorage` on MariaDB or MySQL.

    The default ``QTASKS["STORAGE"]`` (``DjangoStorage``) builds this class when its
    database is MariaDB or MySQL (:mod:`django_qtasks.storage.build`), so the setting
    needs no change."""

    def start(self) -> None:
        problem = version_problem(connections[self.alias])
        if problem:
            raise ConfigurationError(f"QTASKS['DATABASE'] {self.alias!r}: {problem}")
        super().start()

    def _table(self) -> str:
        return connections[self.alias].ops.quote_name(TaskRecord._meta.db_table)

    def _read_committed(self, cursor: Any) -> None:
        """As the first statement of a transaction of our own: READ COMMITTED for it when
        the connection is set to another level (``SET TRANSACTION`` without SESSION lasts
        for the next transaction only). Inside a caller's transaction it is too late."""
        connection = connections[self.alias]
        if getattr(connection, "isolation_level", None) == "read committed":
            return
        if len(connection.atomic_blocks) == 1:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")

    # -- claim ------------------------------------------------------------------------
    # One transaction each, so each is what runs again after a deadlock (not the whole
    # claim(): rows of an earlier round are committed and this worker's already).
    @retry_deadlocks
    def _claim_batch(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        exclude: Collection[str],
        uuids: Collection[uuid_lib.UUID] | None,
    ) -> tuple[list[Task], dict[uuid_lib.UUID, str]]:
        connection = connections[self.alias]
        ops = connection.ops
        table = self._table()
        claimed_at = timezone.now()
        now = ops.adapt_datetimefield_value(claimed_at)
        # The claim index holds waiting rows only (the others' column is NULL), in
        # claim order: the scan stops after ``limit`` ready rows it could lock. The
        # concurrency hint's subquery is a plain read: a subquery of a locking read does
        # not lock what it reads.
        waiting = f"{CLAIM_COLUMN} IS NOT NULL"
        where, params = self._claim_where(waiting, queues, exclude, uuids, now)
        # The claim index, whatever the statistics say (a table of finished rows that
        # InnoDB sampled before a burst of enqueues looks like "no waiting rows");
        # given uuids are found by primary key.
        force = "" if uuids is not None else f" FORCE INDEX ({CLAIM_INDEX})"
        columns = ", ".join(ops.quote_name(name) for name in _CLAIM_COLUMNS)
        sql = (
            f"SELECT {columns}, CASE WHEN max_concurrency IS NULL THEN NULL ELSE status END "
            f"FROM {table}{force} "
            f"WHERE {where} ORDER BY {CLAIM_COLUMN}, run_after, created_at "
            "LIMIT %s FOR UPDATE SKIP LOCKED"
        )
        with transaction.atomic(using=self.alias), connection.cursor() as cursor:
            self._read_committed(cursor)
            cursor.execute(sql, [*params, limit])
            rows = cursor.fetchall()
            if not rows:
                return [], {}
            marks = ", ".join(["%s"] * len(rows))
            cursor.execute(
                f"UPDATE {table} SET status = %s, worker_id = %s, attempt = {CLAIM_ATTEMPT}, "
                f"started_at = %s, updated_at = %s WHERE uuid IN ({marks})",
                [TaskStatus.PROCESS.value, worker_id, now, now, *(row[0] for row in rows)],
            )
        # The rows as the UPDATE left them: the rest is what _claimed knows.
        at = _CLAIM_COLUMNS.index("attempt")
        rows = [(*row[:at], _spent(row[at]), *row[at + 1 :]) for row in rows]
        return self._claimed(rows, worker_id, claimed_at)

    @retry_deadlocks
    def _check_limits(
        self, worker_id: str, tasks: list[Task], previous: dict[uuid_lib.UUID, str]
    ) -> tuple[list[Task], int]:
        """As on PostgreSQL, with a named lock (``GET_LOCK``) per group in place of the
        advisory transaction lock: taken in sorted order before the check's transaction
        and released after its commit, so that checks of one group never overlap."""
        connection = connections[self.alias]
        groups = {
            (task.task_name, task.concurrency_key or "") for task in tasks if task.uuid in previous
        }
        names = sorted({f"qtasks.{LOCK_CLASS}.{lock_key(*group)}" for group in groups})
        held: list[str] = []
        try:
            with connection.cursor() as cursor:
                for name in names:
                    cursor.execute("SELECT GET_LOCK(%s, %s)", [name, GROUP_LOCK_TIMEOUT])
                    (granted,) = cursor.fetchone()
                    if granted != 1:
                        raise DatabaseError(
                            f"Timed out after {GROUP_LOCK_TIMEOUT} s waiting for the "
                            f"concurrency lock {name}."
                        )
                    held.append(name)
            return super()._check_limits(worker_id, tasks, previous)
        finally:
            if held:
                with connection.cursor() as cursor:
                    for name in reversed(held):
                        cursor.execute("SELECT RELEASE_LOCK(%s)", [name])

    def _lock_limit_groups(
        self,
        cursor: Any,
        groups: Collection[tuple[str, str]],
        previous: dict[uuid_lib.UUID, str],
    ) -> None:
        """The named locks are held already (see :meth:`_check_limits`)."""

    # -- finishing ----------------------------------------------------------------------
    finish_many = retry_deadlocks(DjangoStorage.finish_many)

    def _update_with_error(
        self,
        assignments: list[tuple[str, Any]],
        where: str,
        where_params: list[Any],
        error_type: str,
        message: Message,
    ) -> list[tuple[uuid_lib.UUID, str]]:
        """The rows are locked and read first (``FOR UPDATE``), then updated by primary
        key (no RETURNING), then their new status read back, in one transaction."""
        connection = connections[self.alias]
        pk = TaskRecord._meta.pk
        table = self._table()
        sets, params = self._error_update_sets(assignments, error_type, message)
        with transaction.atomic(using=self.alias), connection.cursor() as cursor:
            cursor.execute(f"SELECT uuid FROM {table} WHERE {where} FOR UPDATE", where_params)
            uuids = [pk.get_db_prep_value(_as_uuid(u), connection) for (u,) in cursor.fetchall()]
            if not uuids:
                return []
            marks = ", ".join(["%s"] * len(uuids))
            cursor.execute(f"UPDATE {table} SET {sets} WHERE uuid IN ({marks})", [*params, *uuids])
            cursor.execute(f"SELECT uuid, status FROM {table} WHERE uuid IN ({marks})", uuids)
            return [(_as_uuid(uuid), status) for uuid, status in cursor.fetchall()]

    rescue = retry_deadlocks(DjangoStorage.rescue)
    rescue_run = retry_deadlocks(DjangoStorage.rescue_run)
    cancel = retry_deadlocks(DjangoStorage.cancel)

    # -- schedules --------------------------------------------------------------------
    def _insert_tick(self, cursor: Any, table: str, columns: str, params: list[Any]) -> Any:
        """No ON CONFLICT: a plain INSERT in a savepoint. A concurrent insert of the same
        tick waits for the winner's commit, then fails on the unique index."""
        try:
            with transaction.atomic(using=self.alias):
                cursor.execute(
                    f"INSERT INTO {table} ({columns}) VALUES (%s, %s, %s, %s, %s)", params
                )
        except IntegrityError:
            return None
        return cursor.lastrowid

    # -- retention --------------------------------------------------------------------
    def _delete_batch(self, pick: str, params: list[Any], table: str, key: str, lock: str) -> int:
        """No DELETE ... RETURNING over a CTE: the batch is locked and read
        (``FOR UPDATE SKIP LOCKED``, whatever ``lock`` says: schedule runs too), then
        deleted by key, in one transaction."""
        connection = connections[self.alias]
        with transaction.atomic(using=self.alias), connection.cursor() as cursor:
            cursor.execute(pick + " FOR UPDATE SKIP LOCKED", params)
            keys = [row[0] for row in cursor.fetchall()]
            if keys:
                cursor.execute(
                    f"DELETE FROM {table} WHERE {key} IN ({', '.join(['%s'] * len(keys))})", keys
                )
        return len(keys)


__all__ = ["MySQLStorage", "retry_deadlocks", "version_problem"]
