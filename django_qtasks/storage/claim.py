"""Claim: handing ready tasks to a worker, within their concurrency limits.

Storage: every database operation on the task table lives here.

The claim is one statement that selects waiting rows in claim order, locks them
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and marks them ``process`` with the
worker's id: no transaction stays open while a task runs. On SQLite the same
``UPDATE ... RETURNING`` takes the write lock when it starts, so two workers never
claim one task. A claim that returns tasks with a concurrency limit is followed by a
short check that keeps within each group's limit (see ``DjangoStorage._check_limits``).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid as uuid_lib
from collections.abc import Collection, Sequence
from typing import Any

from django.db import connections, transaction
from django.utils import timezone

from django_qtasks.models import (
    TaskRecord,
    TaskStatus,
)
from django_qtasks.storage.concurrency import LOCK_CLASS, lock_key
from django_qtasks.storage.rows import (
    _CLAIM_COLUMNS,
    MAX_ATTEMPT,
    BadRow,
    _snapshot_from_row,
    claim_converters,
)
from django_qtasks.storage.table import ATTEMPT_BEFORE, TableStorage
from django_qtasks.values import Outcome, Task

logger = logging.getLogger("django_qtasks.storage")


_CLAIM_ROUNDS = 3  # claims in one claim() call, when limited tasks were handed back
# A claim spends an attempt, but not past the column's limit (such a row is a BadRow):
# an overflow would fail the whole statement, so no task could be claimed at all.
CLAIM_ATTEMPT = f"CASE WHEN attempt < {MAX_ATTEMPT} THEN attempt + 1 ELSE attempt END"


class ClaimMixin(TableStorage):
    """Claiming ready tasks, and when the next delayed one is due."""

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        *,
        exclude: Collection[str] = (),
        uuids: Collection[uuid_lib.UUID] | None = None,
    ) -> list[Task]:
        if limit <= 0 or (uuids is not None and not uuids):
            return []
        claimed: list[Task] = []
        # A batch whose limited rows had to be handed back leaves this worker's threads
        # free: claim again at once (other tasks may be ready), a few rounds at most. The
        # handed-back rows are skipped: the running rows that made them excess are
        # committed, so the claim's hint now sees their group full.
        interleaved = False  # batches of several rounds, each in claim order by itself
        for _round in range(_CLAIM_ROUNDS):
            batch, previous = self._claim_batch(
                worker_id, queues, limit - len(claimed), exclude, uuids
            )
            handed_back = 0
            if previous:  # limited rows in the batch: the common path never gets here
                batch, handed_back = self._check_limits(worker_id, batch, previous)
            interleaved = interleaved or bool(claimed and batch)
            claimed += batch
            if not handed_back or len(claimed) >= limit:
                break
        if interleaved:
            claimed.sort(key=_claim_order)
        return claimed

    def _claim_batch(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        exclude: Collection[str],
        uuids: Collection[uuid_lib.UUID] | None,
    ) -> tuple[list[Task], dict[uuid_lib.UUID, str]]:
        """One claim statement; returns the tasks and, for the limited ones only, the
        status each had before (``new`` or ``retry``), should it have to be handed back."""
        connection = connections[self.alias]
        ops = connection.ops
        table = ops.quote_name(TaskRecord._meta.db_table)
        claimed_at = timezone.now()
        now = ops.adapt_datetimefield_value(claimed_at)
        # The statuses are literals, as in the partial index's condition: SQLite uses a
        # partial index only when the query repeats that condition word for word.
        where, params = self._claim_where(
            f"status IN ('{TaskStatus.NEW.value}', '{TaskStatus.RETRY.value}')",
            queues, exclude, uuids, now,
        )  # fmt: skip
        lock = (
            " FOR UPDATE SKIP LOCKED"
            if connection.features.has_select_for_update_skip_locked
            else ""
        )
        postgres = connection.vendor == "postgresql"
        # What the status was, for limited rows only (NULL for the others). PostgreSQL
        # skips the look-up for unlimited rows. SQLite (3.40) evaluates ``x IS NULL``
        # wrongly in a RETURNING clause, so there the CTE decides and every row looks
        # its ``was`` up (in the CTE's automatic index).
        previous = f"(SELECT p.was FROM picked p WHERE p.uuid = {table}.uuid)"
        returned = ", ".join(_returned(ops, name, connection.vendor) for name in _CLAIM_COLUMNS) + (
            f", CASE WHEN {table}.max_concurrency IS NULL THEN NULL ELSE {previous} END"
            if postgres
            else f", {previous}"
        )
        # The batch is picked once, in a MATERIALIZED CTE: a plain `uuid IN (SELECT ...
        # LIMIT n SKIP LOCKED)` may be run again by some plans, and each run can lock
        # other rows, claiming more than n.
        sql = (
            f"WITH picked AS MATERIALIZED (SELECT uuid, CASE WHEN max_concurrency IS NULL "
            f"THEN NULL ELSE status END AS was FROM {table} WHERE {where} "
            f"ORDER BY priority DESC, run_after, created_at LIMIT %s{lock}) "
            f"UPDATE {table} SET status = %s, worker_id = %s, attempt = {CLAIM_ATTEMPT}, "
            f"started_at = %s, updated_at = %s "
            f"WHERE uuid IN (SELECT uuid FROM picked) "
            f"RETURNING {returned}"
        )
        all_params = [*params, limit, TaskStatus.PROCESS.value, worker_id, now, now]
        with connection.cursor() as cursor:
            steer = postgres and uuids is None and _can_steer(connection, cursor)
            prefix = claim_settings(durable=self.settings.durable_claims) if steer else ""
            cursor.execute(prefix + sql, all_params)
            while steer and cursor.description is None and cursor.nextset():
                pass  # past the SETs' empty results, to the claimed rows
            rows = cursor.fetchall()
        return self._claimed(rows, worker_id, claimed_at)

    def _claimed(
        self, rows: Sequence[Sequence[Any]], worker_id: str, claimed_at: dt.datetime
    ) -> tuple[list[Task], dict[uuid_lib.UUID, str]]:
        """The claim's rows (the _CLAIM_COLUMNS, then the limited rows' old status) as
        snapshots in claim order, and the old statuses by task. Each row is decoded by
        itself: one that cannot be run ends ``error`` alone (``_fail_bad_rows``)."""
        connection = connections[self.alias]
        # The hot path on PostgreSQL: plain rows into snapshots, no model instances.
        # Django's psycopg setup hands jsonb over as text, decoded here as on the others.
        converters = () if connection.vendor == "postgresql" else claim_converters(self.alias)
        known = {
            "status": TaskStatus.PROCESS.value,
            "worker_id": worker_id,
            "started_at": claimed_at,
            "updated_at": claimed_at,
            "returning": None,
            "finished_at": None,
        }
        tasks = []
        bad: list[BadRow] = []
        was: dict[uuid_lib.UUID, str] = {}
        for row in rows:
            try:
                tasks.append(_snapshot_from_row(row[:-1], known, converters))
            except BadRow as exc:
                bad.append(exc)
                continue
            if row[-1] is not None:
                was[tasks[-1].uuid] = row[-1]
        if bad:
            self._fail_bad_rows(bad)
        tasks.sort(key=_claim_order)
        return tasks, was

    def _fail_bad_rows(self, bad: list[BadRow]) -> None:
        """End each claimed row that cannot be run in ``error``, at once and alone: the
        rest of its batch runs. Never retried: it would fail the same way."""
        for exc in bad:
            logger.error("Task %s: %s", exc.task.uuid, exc, extra={"task_uuid": exc.task.uuid})
        # A uuid that cannot be read cannot be failed by; the row is left in ``process``.
        bad = [exc for exc in bad if exc.task.uuid is not None]
        error = {"type": "django_qtasks.exceptions.BadTaskRow"}
        self.finish_many(
            [
                (exc.task, Outcome(status=TaskStatus.ERROR, error={**error, "message": str(exc)}))
                for exc in bad
            ]
        )

    def _claim_where(
        self,
        waiting: str,
        queues: Sequence[str] | None,
        exclude: Collection[str],
        uuids: Collection[uuid_lib.UUID] | None,
        now: Any,
    ) -> tuple[str, list[Any]]:
        """The claim's WHERE clause and its parameters: ``waiting`` (the condition of the
        database's claim index), ready or one of ``uuids``, the queues, and the
        concurrency hint."""
        connection = connections[self.alias]
        table = connection.ops.quote_name(TaskRecord._meta.db_table)
        where = f"{waiting} AND run_after <= %s"
        params: list[Any] = [now]
        if uuids is not None:
            pk = TaskRecord._meta.pk
            where = f"{waiting} AND uuid IN ({', '.join(['%s'] * len(uuids))})"
            params = [pk.get_db_prep_value(u, connection) for u in uuids]
        if queues:
            where += f" AND queue IN ({', '.join(['%s'] * len(queues))})"
            params.extend(queues)
        if exclude:
            where += f" AND queue NOT IN ({', '.join(['%s'] * len(exclude))})"
            params.extend(exclude)
        # The concurrency hint: a limited row whose group is full now is not taken. Only
        # limited rows pay for the count (through qtasks_limited_running_idx). It can be
        # wrong (two workers count at once, one batch takes several rows of a group):
        # _check_limits decides; the hint only keeps a full group's rows from churning.
        where += (
            " AND CASE WHEN max_concurrency IS NULL THEN TRUE ELSE "
            f"(SELECT COUNT(*) FROM {table} r WHERE r.status = '{TaskStatus.PROCESS.value}' "
            f"AND r.concurrency_key IS NOT NULL AND r.task_name = {table}.task_name "
            f"AND r.concurrency_key = {table}.concurrency_key) < max_concurrency END"
        )
        return where, params

    def _check_limits(
        self, worker_id: str, tasks: list[Task], previous: dict[uuid_lib.UUID, str]
    ) -> tuple[list[Task], int]:
        """Keep the limited tasks of a claim that fit in their groups' limits and hand
        the others back (undoing their claim), in one short transaction; returns the
        tasks to run and how many were handed back.

        Why a limit is never exceeded. A task runs only once a check kept it, and the
        checks of one group never overlap: on PostgreSQL each takes the group's
        transaction-level advisory lock (groups in sorted order, so two checks never
        wait for each other in a cycle), on SQLite the first write takes the database's
        write lock. Under that lock the check counts the group's ``process`` rows in a
        statement that starts after the lock was granted (READ COMMITTED: it sees
        every commit made before it). The claim statement that marked a row ``process``
        committed before that row's check began, and a check commits (handing back
        what it does not keep) before it releases the lock. So every row kept by an
        earlier check that still runs is in the count, with this worker's own claims
        and any other claims not yet checked, which only make the count larger. The
        check keeps at most ``limit - (count - own)`` of its own rows, so kept and
        running rows of the group are never more than the limit; rows only leave
        ``process`` (finished, rescued, handed back), never join it without a check.
        Where a group's rows carry different limits (the option changed between two
        deployments), the smallest limit among this worker's rows applies. (The one
        exception is delivery's own: a worker cut off from the database past its
        heartbeat's expiry may still run a task that was rescued and claimed again.)
        """
        connection = connections[self.alias]
        ops = connection.ops
        table = ops.quote_name(TaskRecord._meta.db_table)
        mine: dict[tuple[str, str], list[Task]] = {}
        for task in tasks:  # in claim order, so the last of a group has the lowest priority
            if task.uuid in previous:
                mine.setdefault((task.task_name, task.concurrency_key or ""), []).append(task)
        excess: list[Task] = []
        with transaction.atomic(using=self.alias), connection.cursor() as cursor:
            self._lock_limit_groups(cursor, mine, previous)
            matches = " OR ".join(["(task_name = %s AND concurrency_key = %s)"] * len(mine))
            cursor.execute(
                f"SELECT task_name, concurrency_key, COUNT(*) FROM {table} "
                f"WHERE status = '{TaskStatus.PROCESS.value}' AND concurrency_key IS NOT NULL "
                f"AND ({matches}) GROUP BY task_name, concurrency_key",
                [value for group in mine for value in group],
            )
            running = {(name, key): count for name, key, count in cursor.fetchall()}
            for group, rows in mine.items():
                over = running.get(group, 0) - min(t.max_concurrency or 1 for t in rows)
                if over > 0:
                    excess += rows[-over:]
            if excess:
                self._undo_claims(cursor, worker_id, excess, previous)
        if not excess:
            return tasks, 0
        logger.debug(
            "Handed back %d task(s) over their concurrency limit",
            len(excess),
            extra={"action": "concurrency_limited", "count": len(excess)},
        )
        dropped = {task.uuid for task in excess}
        return [task for task in tasks if task.uuid not in dropped], len(excess)

    def _lock_limit_groups(
        self,
        cursor: Any,
        groups: Collection[tuple[str, str]],
        previous: dict[uuid_lib.UUID, str],
    ) -> None:
        """Make the concurrency checks of these groups take turns (see _check_limits):
        on PostgreSQL the groups' transaction-level advisory locks, on SQLite the
        database's write lock, taken by a first write."""
        connection = connections[self.alias]
        if connection.vendor == "postgresql":
            level = getattr(getattr(connection, "isolation_level", None), "name", "")
            if len(connection.atomic_blocks) == 1 and level in ("REPEATABLE_READ", "SERIALIZABLE"):
                # The count must see commits made while this waited for the lock (not
                # inside a caller's transaction, which has begun); SET TRANSACTION
                # lasts for this transaction only (poolers allow it).
                cursor.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            # In array order (a function scan): sorted, so no two checks deadlock.
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, k) FROM unnest(%s::integer[]) AS u(k)",
                [LOCK_CLASS, sorted({lock_key(*group) for group in groups})],
            )
        else:
            first = next(iter(previous))
            cursor.execute(
                f"UPDATE {connection.ops.quote_name(TaskRecord._meta.db_table)} "
                "SET updated_at = updated_at WHERE uuid = %s",
                [TaskRecord._meta.pk.get_db_prep_value(first, connection)],
            )

    def _undo_claims(
        self,
        cursor: Any,
        worker_id: str,
        tasks: list[Task],
        previous: dict[uuid_lib.UUID, str],
    ) -> None:
        """Put claimed tasks back as they were before the claim: their status (``new``
        or ``retry``), their attempt, no worker and no start time."""
        connection = connections[self.alias]
        ops = connection.ops
        table = ops.quote_name(TaskRecord._meta.db_table)
        pk = TaskRecord._meta.pk
        now = ops.adapt_datetimefield_value(timezone.now())
        for status in (TaskStatus.NEW.value, TaskStatus.RETRY.value):
            uuids = [
                pk.get_db_prep_value(t.uuid, connection)
                for t in tasks
                if previous.get(t.uuid, TaskStatus.NEW.value) == status
            ]
            if uuids:
                cursor.execute(
                    f"UPDATE {table} SET status = %s, attempt = {ATTEMPT_BEFORE}, worker_id = '', "
                    f"started_at = NULL, updated_at = %s WHERE uuid IN "
                    f"({', '.join(['%s'] * len(uuids))}) "
                    f"AND status = '{TaskStatus.PROCESS.value}' AND worker_id = %s",
                    [status, now, *uuids, worker_id],
                )

    def next_run_after(
        self, queues: Sequence[str] | None, exclude: Collection[str] = ()
    ) -> dt.datetime | None:
        waiting = self._records().filter(
            status__in=[TaskStatus.NEW, TaskStatus.RETRY], run_after__gt=timezone.now()
        )
        if queues:
            waiting = waiting.filter(queue__in=queues)
        if exclude:
            waiting = waiting.exclude(queue__in=exclude)
        first: dt.datetime | None = (
            waiting.order_by("run_after").values_list("run_after", flat=True).first()
        )
        return first


CLAIM_PLANNER_SETTINGS = "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off; "
# ... and, unless QTASKS["DURABLE_CLAIMS"], the claim's commit does not wait for its WAL
# to reach the disk. A claim only moves rows from `new` to `process`: if the database
# crashes before the WAL writer flushes it (a fraction of a second later), the rows are
# `new` again after recovery and run again, which is what a crashed worker costs anyway
# (at-least-once). The commit that stores the result waits as always, and flushes the
# claim's WAL with it. An idle worker's pickup saves a disk flush, a busy one a flush
# per batch.
CLAIM_ASYNC_COMMIT = "SET LOCAL synchronous_commit = off; "


def claim_settings(*, durable: bool) -> str:
    """What the claim statement carries in autocommit (see above)."""
    return CLAIM_PLANNER_SETTINGS if durable else CLAIM_PLANNER_SETTINGS + CLAIM_ASYNC_COMMIT


def _can_steer(connection: Any, cursor: Any) -> bool:
    """Whether the claim can carry its settings (claim_settings): only in autocommit (inside
    the caller's transaction SET LOCAL would outlive the claim) and with psycopg's
    client-side binding, the only way several statements go in one message."""
    if connection.in_atomic_block:
        return False
    try:
        from psycopg import ClientCursor
    except ImportError:  # psycopg2
        return False
    return isinstance(cursor.cursor, ClientCursor)


def _returned(ops: Any, name: str, vendor: str) -> str:
    """A column as the claim reads it back. SQLite's driver parses a column declared as
    a time itself, where one bad value would fail the whole fetch: there times come as
    text, for each row's own decoding (BadRow)."""
    quoted = ops.quote_name(name)
    if vendor == "sqlite" and name in ("run_after", "created_at"):
        return f"CAST({quoted} AS TEXT)"
    return str(quoted)


def _claim_order(task: Task) -> tuple[Any, ...]:
    """The claim index's order: higher priority first, then older run_after and age."""
    return (-task.priority, task.run_after, task.created_at)
