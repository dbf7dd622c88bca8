"""Schedules: enqueueing each tick of a periodic task once, however many workers try.

The tick's ``ScheduleRun`` row is inserted first, with ``ON CONFLICT DO NOTHING``: the
database decides which worker enqueues it, in one transaction with the task's row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from django.db import connections, transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from django_qtasks.models import (
    ScheduleRun,
)
from django_qtasks.storage.enqueue import EnqueueMixin
from django_qtasks.storage.interface import LastRun
from django_qtasks.values import Task, TaskSpec


class ScheduleMixin(EnqueueMixin):
    """Storing schedule ticks and reading each schedule's last run."""

    def add_scheduled(
        self, schedule: str, tick: dt.datetime, spec: TaskSpec, worker_id: str = ""
    ) -> Task | None:
        connection = connections[self.alias]
        ops = connection.ops
        table = ops.quote_name(ScheduleRun._meta.db_table)
        columns = ", ".join(
            ops.quote_name(c) for c in ("schedule", "tick", "task_name", "enqueued_at", "worker_id")
        )
        params = [
            schedule,
            ops.adapt_datetimefield_value(tick),
            spec.task_name,
            ops.adapt_datetimefield_value(timezone.now()),
            worker_id,
        ]
        # The tick's row first: a worker that loses the race does one statement and
        # inserts no task. On PostgreSQL a concurrent insert of the same tick waits for
        # the winner's commit and then does nothing; on SQLite the transaction holds
        # the write lock from its start.
        with transaction.atomic(using=self.alias), connection.cursor() as cursor:
            run_id = self._insert_tick(cursor, table, columns, params)
            if run_id is None:
                return None
            task = self._insert([spec])[0]
            task_uuid = ScheduleRun._meta.get_field("task_uuid").get_db_prep_value(
                task.uuid, connection
            )
            cursor.execute(f"UPDATE {table} SET task_uuid = %s WHERE id = %s", [task_uuid, run_id])
        return task

    def _insert_tick(self, cursor: Any, table: str, columns: str, params: list[Any]) -> Any:
        """INSERT a schedule run's row unless its tick has one; its id, or None."""
        ops = connections[self.alias].ops
        conflict = ", ".join(ops.quote_name(c) for c in ("schedule", "tick"))
        cursor.execute(
            f"INSERT INTO {table} ({columns}) VALUES (%s, %s, %s, %s, %s) "
            f"ON CONFLICT ({conflict}) DO NOTHING RETURNING id",
            params,
        )
        row = cursor.fetchone()
        return None if row is None else row[0]

    def last_schedule_runs(self, names: Collection[str]) -> dict[str, LastRun]:
        if not names:
            return {}
        runs = ScheduleRun.objects.using(self.alias)
        newest = runs.filter(schedule=OuterRef("schedule")).order_by("-tick").values("tick")[:1]
        rows = runs.filter(schedule__in=list(names), tick=Subquery(newest)).values_list(
            "schedule", "tick", "task_uuid", "enqueued_at"
        )
        return {name: LastRun(tick, task_uuid, at) for name, tick, task_uuid, at in rows}
