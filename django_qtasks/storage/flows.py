"""Flows: the statements of chains and groups (docs/workflows.md).

A flow is stored whole at once, its later stages ``blocked``; when a stage's tasks have
all succeeded the next stage is released with their results, and a failed or cancelled
step cancels every blocked step after it. Finishing and cancelling both call these.
"""

from __future__ import annotations

import json
import uuid as uuid_lib
from collections.abc import Collection, Sequence
from typing import Any

from django.db import connections, transaction
from django.utils import timezone

from django_qtasks.models import (
    TaskRecord,
    TaskStatus,
)
from django_qtasks.storage.enqueue import EnqueueMixin
from django_qtasks.storage.interface import CHANNEL
from django_qtasks.storage.rows import _as_uuid
from django_qtasks.storage.table import _NOW, CANCELLED, _json_append, _json_param
from django_qtasks.values import Outcome, Task, TaskSpec


class FlowMixin(EnqueueMixin):
    """Storing chains and groups, and moving them on as their steps end."""

    def add_flow(self, specs: Sequence[TaskSpec]) -> list[Task]:
        # The specs carry each task's place in the flow and whether it is blocked:
        # one INSERT (COPY for many) writes them as they are, all or none.
        with transaction.atomic(using=self.alias):
            return self._insert(specs)

    def _advance_flows(self, finished: Sequence[tuple[Task, Outcome]]) -> None:
        """After tasks of flows finished (in the caller's transaction): cancel what
        follows a failed or cancelled one, and release the next stage of each stage
        that may now be complete. Flows are taken in one order (by ``flow_id``), so
        that two batches never lock the rows of two flows in opposite orders."""
        released: set[tuple[uuid_lib.UUID, int]] = set()
        for task, outcome in sorted(finished, key=lambda item: str(item[0].flow_id)):
            if task.flow_id is None or task.flow_stage is None:
                continue
            if outcome.status != TaskStatus.SUCCESS:
                self._cancel_later_steps(
                    task.uuid, task.task_name, outcome.status, task.flow_id, task.flow_stage
                )
            elif (task.flow_id, task.flow_stage) not in released:
                released.add((task.flow_id, task.flow_stage))
                self._release_stage(task.flow_id, task.flow_stage + 1)

    def _release_stage(self, flow_id: uuid_lib.UUID, stage: int) -> None:
        """Make the blocked tasks of ``stage`` ready, with the result of the stage before
        appended to their ``args``, if every task of that stage succeeded.

        Two workers may finish the last two tasks of a stage at the same moment, each
        seeing the other's as still running: so the next stage's rows are locked first
        (``FOR UPDATE``; SQLite's transaction holds the write lock already) and the stage
        before is read in a new statement, which sees whatever the other transaction
        committed before it let the lock go. Exactly one of them releases.
        """
        connection = connections[self.alias]
        ops = connection.ops
        table = ops.quote_name(TaskRecord._meta.db_table)
        flow = TaskRecord._meta.get_field("flow_id").get_db_prep_value(flow_id, connection)
        vendor = connection.vendor
        pk = TaskRecord._meta.pk
        blocked = TaskStatus.BLOCKED.value
        lock = "" if vendor == "sqlite" else " FOR UPDATE"
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT uuid, queue FROM {table} WHERE flow_id = %s AND flow_stage = %s "
                f"AND status = '{blocked}' ORDER BY uuid{lock}",
                [flow, stage],
            )
            waiting = cursor.fetchall()
            if not waiting:
                return  # the end of the flow, or released or cancelled already
            cursor.execute(
                f"SELECT status, {ops.quote_name('returning')}, flow_index FROM {table} "
                "WHERE flow_id = %s AND flow_stage = %s ORDER BY flow_index",
                [flow, stage - 1],
            )
            before = cursor.fetchall()
            if not before or any(status != TaskStatus.SUCCESS for status, _, _ in before):
                return  # still running (or failed: its cancel has run or will)
            # Django hands JSON columns over as text, on every database.
            results = [None if value is None else json.loads(value) for _, value, _ in before]
            passed = results if before[0][2] is not None else results[0]
            append = _json_append(vendor, "args", _json_param(vendor))
            now = ops.adapt_datetimefield_value(timezone.now())
            # The rows locked above (on SQLite the transaction holds the write lock).
            uuids = [pk.get_db_prep_value(_as_uuid(uuid), connection) for uuid, _ in waiting]
            cursor.execute(
                f"UPDATE {table} SET status = '{TaskStatus.NEW.value}', args = {append}, "
                f"run_after = %s, updated_at = %s "
                f"WHERE uuid IN ({', '.join(['%s'] * len(uuids))})",
                [json.dumps(passed), now, now, *uuids],
            )
            queues = sorted({queue for _, queue in waiting})
            if vendor == "postgresql" and queues:
                # The notify trigger fires on INSERT only: wake idle workers here (sent
                # at commit, like the trigger's).
                cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, ",".join(queues)])

    def _cancel_flows_after(self, uuids: Collection[uuid_lib.UUID]) -> None:
        """Cancel the blocked later steps of the flows of these failed or cancelled
        tasks (in the caller's transaction): they would wait for a result that never
        comes. Tasks outside flows cost one indexed read."""
        connection = connections[self.alias]
        pk = TaskRecord._meta.pk
        marks = ", ".join(["%s"] * len(uuids))
        table = connection.ops.quote_name(TaskRecord._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT uuid, task_name, status, flow_id, flow_stage FROM {table} "
                f"WHERE uuid IN ({marks}) AND flow_id IS NOT NULL",
                [pk.get_db_prep_value(uuid, connection) for uuid in uuids],
            )
            ended = cursor.fetchall()
        for uuid, task_name, status, flow_id, stage in sorted(ended, key=lambda row: str(row[3])):
            self._cancel_later_steps(_as_uuid(uuid), task_name, status, flow_id, stage)

    def _cancel_later_steps(
        self, uuid: uuid_lib.UUID, task_name: str, status: str, flow_id: Any, stage: int
    ) -> None:
        """Cancel the blocked steps after ``stage`` of a flow, saying which task ended it."""
        flow = TaskRecord._meta.get_field("flow_id").get_db_prep_value(
            flow_id, connections[self.alias]
        )
        message = f"Cancelled: an earlier step of its flow, {task_name} ({uuid}), ended {status}."
        self._update_with_error(
            [
                ("status = %s", [TaskStatus.CANCEL]),
                ("finished_at = %s", [_NOW]),
                ("traceback = %s", [message]),
            ],
            "flow_id = %s AND flow_stage > %s AND status = %s",
            [flow, stage, TaskStatus.BLOCKED],
            CANCELLED,
            message,
        )
