"""Pruning: the statements that delete old finished tasks and schedule runs.

Each call deletes one bounded batch in one short statement, through the finished-rows
index; :mod:`django_qtasks.storage.retention` decides when and how many batches run
(the ``qtasks_prune`` command and the heartbeat's ``PRUNE_AFTER``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection
from typing import Any

from django.db import connections, transaction

from django_qtasks.models import (
    FINISHED_STATUSES,
    ScheduleRun,
    TaskRecord,
    TaskStatus,
)
from django_qtasks.storage.table import TableStorage

logger = logging.getLogger("django_qtasks.storage")


class PruneMixin(TableStorage):
    """Deleting old finished tasks and schedule runs in batches."""

    def _prune_where(self, before: dt.datetime, statuses: Collection[str]) -> tuple[str, list[Any]]:
        chosen = [str(status) for status in statuses]
        if not chosen or not set(chosen) <= set(FINISHED_STATUSES):
            raise ValueError(
                f"prune deletes finished tasks only ({', '.join(FINISHED_STATUSES)}); "
                f"got {', '.join(chosen) or 'none'}."
            )
        connection = connections[self.alias]
        table = connection.ops.quote_name(TaskRecord._meta.db_table)
        # Through the finished-rows index (finished_at, status): waiting and running rows
        # have no finished_at, so they are neither read nor locked. A finished task of a
        # flow whose later steps still wait stays: their release reads its result.
        where = (
            f"finished_at IS NOT NULL AND finished_at < %s "
            f"AND status IN ({', '.join(['%s'] * len(chosen))}) "
            f"AND (flow_id IS NULL OR NOT EXISTS (SELECT 1 FROM {table} b "
            f"WHERE b.flow_id = {table}.flow_id AND b.status = '{TaskStatus.BLOCKED.value}'))"
        )
        return where, [connection.ops.adapt_datetimefield_value(before), *chosen]

    def prune(
        self,
        before: dt.datetime,
        statuses: Collection[str] = FINISHED_STATUSES,
        limit: int = 1000,
    ) -> int:
        if limit <= 0:
            return 0
        where, params = self._prune_where(before, statuses)
        connection = connections[self.alias]
        table = connection.ops.quote_name(TaskRecord._meta.db_table)
        # Oldest first, in the index's order. SKIP LOCKED: two workers pruning at once
        # take different rows, and neither waits for the other.
        lock = (
            " FOR UPDATE SKIP LOCKED"
            if connection.features.has_select_for_update_skip_locked
            else ""
        )
        deleted = self._delete_batch(
            f"SELECT uuid FROM {table} WHERE {where} ORDER BY finished_at LIMIT %s",
            [*params, limit],
            table,
            "uuid",
            lock,
        )
        if deleted:
            logger.info(
                "Pruned %d finished task(s)", deleted, extra={"action": "prune", "count": deleted}
            )
        return deleted

    def count_prunable(
        self, before: dt.datetime, statuses: Collection[str] = FINISHED_STATUSES
    ) -> int:
        where, params = self._prune_where(before, statuses)
        connection = connections[self.alias]
        table = connection.ops.quote_name(TaskRecord._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", params)
            row = cursor.fetchone()
        return int(row[0])

    def prune_schedule_runs(self, before: dt.datetime, limit: int = 1000) -> int:
        if limit <= 0:
            return 0
        connection = connections[self.alias]
        ops = connection.ops
        table = ops.quote_name(ScheduleRun._meta.db_table)
        schedule, tick = ops.quote_name("schedule"), ops.quote_name("tick")
        return self._delete_batch(
            f"SELECT r.id FROM {table} r WHERE r.{tick} < %s AND EXISTS (SELECT 1 FROM "
            f"{table} n WHERE n.{schedule} = r.{schedule} AND n.{tick} > r.{tick}) "
            f"ORDER BY r.{tick} LIMIT %s",
            [ops.adapt_datetimefield_value(before), limit],
            table,
            "id",
            "",
        )

    def _delete_batch(self, pick: str, params: list[Any], table: str, key: str, lock: str) -> int:
        """Delete the rows whose ``key`` the SELECT ``pick`` (LIMITed) returns, in one
        statement; how many. ``lock`` goes after the SELECT (SKIP LOCKED: two pruners
        take different rows, neither waits for the other).

        A materialized CTE, not ``key IN (SELECT ... LIMIT n)``: PostgreSQL may run such
        a subquery more than once in one statement, and with SKIP LOCKED each run can
        pick other rows, so a "batch" could grow past ``limit``. Counted from RETURNING:
        SQLite's driver has no rowcount for WITH statements."""
        connection = connections[self.alias]
        with transaction.atomic(using=self.alias), connection.cursor() as cursor:
            cursor.execute(
                f"WITH batch AS MATERIALIZED ({pick}{lock}) DELETE FROM {table} "
                f"WHERE {key} IN (SELECT {key} FROM batch) RETURNING {key}",
                params,
            )
            return len(cursor.fetchall())


# Sent before the claim statement, in the same Query message: the implicit transaction
# of a multi-statement query ends with it, so the settings do too. They keep the plan
# that reads qtasks_claim_idx in claim order and stops after a batch, whatever the
# statistics say. Statistics that still describe an empty table, or one of finished
# rows, while thousands of rows wait, make the planner expect a handful of waiting
