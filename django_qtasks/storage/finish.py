"""Finish: storing how attempts ended, a batch at a time, and a running task's progress.

The worker's completer hands over many outcomes at once: on PostgreSQL one ``UPDATE
... FROM unnest()`` (one plan, one round trip, atomic by itself), elsewhere one
prepared ``UPDATE`` per row in one transaction. Only rows still held by the worker
change; a finished step of a flow moves its flow on, in the same transaction.
"""

from __future__ import annotations

import json
import logging
import uuid as uuid_lib
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from django.db import connections, transaction
from django.utils import timezone

from django_qtasks.models import (
    TaskRecord,
    TaskStatus,
)
from django_qtasks.storage.cursors import server_bound_cursor
from django_qtasks.storage.flows import FlowMixin
from django_qtasks.storage.table import _errors_plus, _json_param
from django_qtasks.values import Outcome, Task

logger = logging.getLogger("django_qtasks.storage")


class FinishMixin(FlowMixin):
    """Storing outcomes and progress."""

    def finish_many(self, items: Sequence[tuple[Task, Outcome]]) -> list[bool]:
        if not items:
            return []
        connection = connections[self.alias]
        now = timezone.now()
        # One row of plain values per outcome; ``entry`` is a new error-history entry.
        rows = []
        for task, outcome in items:
            entry = None
            if outcome.error is not None:
                entry = json.dumps(
                    {"attempt": task.attempt, "at": now.isoformat(), "worker_id": task.worker_id,
                     **outcome.error,
                     "traceback": outcome.traceback}
                )  # fmt: skip
            success = outcome.status == TaskStatus.SUCCESS
            retry = outcome.status == TaskStatus.RETRY
            rows.append(
                (
                    task.uuid,
                    task.worker_id,
                    str(outcome.status),
                    (outcome.returning_json or json.dumps(outcome.returning))
                    if success and outcome.returning is not None
                    else None,
                    entry,
                    outcome.traceback if entry is not None else None,
                    (outcome.run_after or now) if retry else None,
                    None if retry else now,
                )
            )
        postgres = connection.vendor == "postgresql"
        # One transaction (one commit, one fsync) for the whole batch. On PostgreSQL a
        # batch without chain or group steps is one statement, atomic by itself: no
        # BEGIN and COMMIT round trips.
        atomic = not postgres or any(task.flow_id is not None for task, _ in items)
        with (
            transaction.atomic(using=self.alias) if atomic else nullcontext(),
            server_bound_cursor(connection) if postgres else connection.cursor() as cursor,
        ):
            if postgres:
                stored = self._finish_pg(cursor, rows, now)
            else:
                stored = self._finish_rows(cursor, rows, now)
            # Only a finished task of a chain or group costs more statements.
            flows = [
                (task, outcome)
                for task, outcome in items
                if task.flow_id is not None
                and outcome.status != TaskStatus.RETRY
                and task.uuid in stored
            ]
            if flows:
                self._advance_flows(flows)
        results = []
        for task, outcome in items:
            results.append(task.uuid in stored)
            if task.uuid not in stored:
                logger.warning(
                    "Task %s was no longer held by worker %s; its %s result was not stored.",
                    task.uuid,
                    task.worker_id,
                    outcome.status,
                    extra={"action": "finish_lost", "task_uuid": str(task.uuid)},
                )
        return results

    def _finish_pg(self, cursor: Any, rows: list[tuple[Any, ...]], now: Any) -> set[Any]:
        """One UPDATE ... FROM unnest(arrays): one plan and one round trip per batch."""
        table = connections[self.alias].ops.quote_name(TaskRecord._meta.db_table)
        errors_sql = _errors_plus("postgresql", "v.entry::jsonb")
        cursor.execute(
            f'UPDATE {table} AS t SET status = v.status, "returning" = v.ret::jsonb, '
            f"errors = CASE WHEN v.entry IS NULL THEN t.errors ELSE {errors_sql} END, "
            "traceback = COALESCE(v.tb, t.traceback), "
            "run_after = COALESCE(v.run_after, t.run_after), "
            "finished_at = v.finished_at, updated_at = %s "
            "FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[], "
            "%s::text[], %s::timestamptz[], %s::timestamptz[]) "
            "AS v(uuid, worker_id, status, ret, entry, tb, run_after, finished_at) "
            f"WHERE t.uuid = v.uuid AND t.status = '{TaskStatus.PROCESS.value}' "
            "AND t.worker_id = v.worker_id RETURNING t.uuid",
            [now, *(list(column) for column in zip(*rows, strict=True))],
        )
        return {uuid for (uuid,) in cursor.fetchall()}

    def _finish_rows(self, cursor: Any, rows: list[tuple[Any, ...]], now: Any) -> set[Any]:
        """One prepared UPDATE per row, in one transaction (SQLite prepares it once;
        mysqlclient sends them one by one). The error entry is assigned first: MariaDB
        evaluates a SET list left to right, each assignment seeing those before it."""
        connection = connections[self.alias]
        ops = connection.ops
        meta = TaskRecord._meta
        table = ops.quote_name(meta.db_table)
        errors_sql = _errors_plus(connection.vendor, _json_param(connection.vendor))
        db_now = ops.adapt_datetimefield_value(now)
        params = [
            [
                entry, entry, status, ret, tb,
                ops.adapt_datetimefield_value(run_after) if run_after else None,
                ops.adapt_datetimefield_value(finished_at) if finished_at else None,
                db_now, meta.pk.get_db_prep_value(uuid, connection), worker_id,
            ]
            for uuid, worker_id, status, ret, entry, tb, run_after, finished_at in rows
        ]  # fmt: skip
        cursor.executemany(
            f"UPDATE {table} SET errors = CASE WHEN %s IS NULL THEN errors ELSE {errors_sql} END, "
            f"status = %s, {ops.quote_name('returning')} = %s, "
            "traceback = COALESCE(%s, traceback), run_after = COALESCE(%s, run_after), "
            "finished_at = %s, updated_at = %s "
            f"WHERE uuid = %s AND status = '{TaskStatus.PROCESS.value}' AND worker_id = %s",
            params,
        )
        if cursor.rowcount == len(rows):
            return {row[0] for row in rows}
        return set(
            self._records()
            .filter(uuid__in=[row[0] for row in rows], updated_at=now)
            .values_list("uuid", flat=True)
        )

    def set_progress(self, uuid: uuid_lib.UUID, progress: dict[str, Any]) -> None:
        self._records().filter(uuid=uuid).update(progress=progress, updated_at=timezone.now())
