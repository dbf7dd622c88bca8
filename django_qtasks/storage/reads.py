"""Reads: the queries behind the dashboard, the admin's filters, ``qtasks_status`` and
the test helpers.

They read the task table and the workers' heartbeats for people, never for the queue's
own work, and each is bounded (a capped count, an index range, a loose index scan), so
a busy table never makes them slow. They live here, with every other statement of the
queue, so that the SQL of the queue has one home; their callers in ``contrib/`` and
the admin only shape what they return.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any, Literal

from django.db import connections
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncMinute

from django_qtasks.models import ACTIVE_STATUSES, ConfigEntry, TaskRecord, TaskStatus
from django_qtasks.storage.interface import WORKERS


def records(alias: str) -> QuerySet[TaskRecord]:
    """The task table on ``alias``, for the admin's own lists and counts."""
    return TaskRecord.objects.using(alias)


def estimated_rows(alias: str) -> int | None:
    """PostgreSQL's own estimate of the task table's size (``pg_class.reltuples``), kept
    by autovacuum; ``None`` elsewhere or when the table was never analysed."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
            [connection.ops.quote_name(TaskRecord._meta.db_table)],
        )
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None and row[0] >= 0 else None


def estimated_status_rows(alias: str) -> dict[str, int]:
    """Status -> estimated rows, from PostgreSQL's column statistics (most common values
    times the table estimate); empty elsewhere or before the first ``ANALYZE``."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.reltuples, s.most_common_vals::text::text[], s.most_common_freqs "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname "
            "WHERE c.oid = to_regclass(%s) AND s.attname = 'status'",
            [connection.ops.quote_name(TaskRecord._meta.db_table)],
        )
        row = cursor.fetchone()
    if not row or row[0] is None or row[0] < 0 or not row[1]:
        return {}
    total, values, freqs = row
    return {value: int(total * freq) for value, freq in zip(values, freqs, strict=False)}


def distinct_values(
    alias: str, column: Literal["queue", "task_name", "status"], limit: int
) -> list[str]:
    """The distinct values of ``column``, in order, at most ``limit`` of them.

    ``SELECT DISTINCT`` would read every row; this recursive query asks the index for
    "the next value after the last one" instead (a loose index scan), so it reads one
    index entry per distinct value, which is a few dozen queues or task names.
    """
    connection = connections[alias]
    table = connection.ops.quote_name(TaskRecord._meta.db_table)
    col = connection.ops.quote_name(column)
    sql = (
        f"WITH RECURSIVE v(val, n) AS ("
        f"SELECT (SELECT {col} FROM {table} ORDER BY {col} LIMIT 1), 1 "
        f"UNION ALL "
        f"SELECT (SELECT {col} FROM {table} WHERE {col} > v.val ORDER BY {col} LIMIT 1), v.n + 1 "
        f"FROM v WHERE v.val IS NOT NULL AND v.n < %s"
        f") SELECT val FROM v WHERE val IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [row[0] for row in cursor.fetchall()]


def capped_status_count(alias: str, status: str, cap: int) -> int:
    """Rows in ``status``, counted through the ``(status, created_at)`` index up to
    ``cap + 1`` (more than ``cap`` means "at least")."""
    return records(alias).filter(status=status).order_by()[: cap + 1].count()


def unknown_statuses(alias: str, cap: int, limit: int) -> dict[str, int]:
    """Statuses outside :class:`TaskStatus` -> their rows (each count capped at ``cap +
    1``), at most ``limit`` of them: rows written by hand or by another release, which no
    worker claims and no pruning deletes. The statuses come from a loose index scan of
    the ``(status, created_at)`` index, so a table without such rows costs a handful of
    index reads.

    MariaDB's and MySQL's default collation ignores case: there every statement of the
    queue takes ``'Success'`` for ``'success'`` (claims, pruning and this scan alike,
    which returns one spelling for both), so such a spelling is not unknown there."""
    known = set(TaskStatus.values)
    folded = connections[alias].vendor == "mysql"
    values = distinct_values(alias, "status", len(known) + limit)
    found = [s for s in values if (s.casefold() if folded else s) not in known]
    return {status: capped_status_count(alias, status, cap) for status in found[:limit]}


def active_queue_rows(alias: str, now: dt.datetime, cap: int) -> list[tuple[Any, ...]]:
    """``(queue, status, count, ready, oldest ready run_after)`` of waiting and running
    rows, at most ``cap`` of them read: one statement over the partial indexes' rows,
    finished rows never read. The oldest time is as the driver returns it."""
    connection = connections[alias]
    table = connection.ops.quote_name(TaskRecord._meta.db_table)
    # Blocked tasks (later steps of flows) are neither waiting nor running yet.
    statuses = ", ".join(f"'{s.value}'" for s in ACTIVE_STATUSES if s != TaskStatus.BLOCKED)
    sql = (
        "SELECT queue, status, COUNT(*), "
        "SUM(CASE WHEN run_after <= %s THEN 1 ELSE 0 END), "
        "MIN(CASE WHEN run_after <= %s THEN run_after END) "
        f"FROM (SELECT queue, status, run_after FROM {table} WHERE status IN ({statuses}) "
        "LIMIT %s) active GROUP BY queue, status"
    )
    db_now = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        cursor.execute(sql, [db_now, db_now, cap])
        return list(cursor.fetchall())


def finished_per_minute(alias: str, since: dt.datetime) -> dict[dt.datetime, tuple[int, int]]:
    """Minute (UTC) -> (finished, failed) since ``since``: one grouped range read of the
    ``finished_at`` partial index."""
    rows = (
        records(alias)
        .filter(finished_at__gte=since)
        .annotate(minute=TruncMinute("finished_at", tzinfo=dt.timezone.utc))
        .values("minute")
        .annotate(
            finished=Count("finished_at"),
            failed=Count("status", filter=Q(status=TaskStatus.ERROR)),
        )
        .order_by()
    )
    return {row["minute"]: (row["finished"], row["failed"]) for row in rows}


def outcomes_since(alias: str, since: dt.datetime) -> dict[str, int]:
    """``finished``, ``failed`` and ``cancelled`` counts since ``since``: one range read
    of the ``finished_at`` partial index, which holds the status too."""
    counts: dict[str, int] = records(alias).filter(finished_at__gte=since).aggregate(
        finished=Count("finished_at"),
        failed=Count("status", filter=Q(status=TaskStatus.ERROR)),
        cancelled=Count("status", filter=Q(status=TaskStatus.CANCEL)),
    )
    return counts


def statuses(alias: str, uuids: Collection[Any]) -> dict[Any, str]:
    """uuid -> status of these tasks (those still in the table)."""
    return dict(records(alias).filter(uuid__in=list(uuids)).values_list("uuid", "status"))


def flow_stage(alias: str, flow_id: Any, stage: int, cap: int) -> list[TaskRecord]:
    """The tasks of one stage of a flow in member order, at most ``cap``, through the
    flow index: a few rows, without their JSON."""
    return list(
        records(alias)
        .filter(flow_id=flow_id, flow_stage=stage)
        .only("uuid", "task_name", "status", "flow_stage", "flow_index")
        .order_by("flow_index", "uuid")[:cap]
    )


def all_tasks(alias: str) -> Sequence[TaskRecord]:
    """Every task row, oldest first (the test helpers' view of what was enqueued)."""
    return list(records(alias).order_by("created_at", "uuid"))


def heartbeats(alias: str, cap: int, worker_id: str | None = None) -> list[ConfigEntry]:
    """The workers' heartbeat entries (expired ones too), newest first, at most ``cap``."""
    entries = ConfigEntry.objects.using(alias).filter(name=WORKERS)
    if worker_id is not None:
        entries = entries.filter(key=worker_id)
    return list(entries.order_by("-updated_at")[:cap])
