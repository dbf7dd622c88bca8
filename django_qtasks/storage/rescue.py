"""Rescue and cancel: tasks whose worker is gone, handed back, retried or cancelled.

Every change here moves a task out of the normal path (a lost worker, a worker that
leaves, an operator's retry or cancel), records why in the task's error history where
it ends an attempt, and cancels the later steps of a flow it ends.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import uuid as uuid_lib
from collections.abc import Collection
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from django_qtasks.exceptions import TaskConflict
from django_qtasks.models import (
    ConfigEntry,
    TaskRecord,
    TaskStatus,
)
from django_qtasks.storage.flows import FlowMixin
from django_qtasks.storage.interface import WORKERS
from django_qtasks.storage.rows import _as_uuid
from django_qtasks.storage.table import _NOW, ATTEMPT_BEFORE, CANCELLED, WORKER_LOST
from django_qtasks.values import Task

logger = logging.getLogger("django_qtasks.storage")
# Seconds over which the tasks rescued together are spread (see RescueMixin._spread).
RESCUE_SPREAD = 2.0


def lost_for_good(why: str, allowance: int) -> str:
    """The message of a task whose run was lost once more than ``MAX_RESCUES`` allows."""
    times = allowance + 1
    return (
        f"Task lost {times} time{'s' if times != 1 else ''}, more than "
        f"QTASKS['MAX_RESCUES'] = {allowance} allows; the last time {why}. "
        "It is not run again."
    )


class RescueMixin(FlowMixin):
    """Rescuing, releasing, requeueing and cancelling tasks."""

    def rescue(
        self,
        worker_id: str | None = None,
        *,
        crashed: bool = True,
        keep: Collection[uuid_lib.UUID] = (),
    ) -> list[tuple[uuid_lib.UUID, str]]:
        connection = connections[self.alias]
        ops = connection.ops
        where = "status = %s"
        where_params: list[Any] = [TaskStatus.PROCESS.value]
        if worker_id is None:
            table = ops.quote_name(TaskRecord._meta.db_table)
            config = ops.quote_name(ConfigEntry._meta.db_table)
            where += (
                f" AND NOT EXISTS (SELECT 1 FROM {config} c WHERE c.name = %s "
                f"AND c.{ops.quote_name('key')} = {table}.worker_id "
                "AND (c.expires_at IS NULL OR c.expires_at > %s))"
            )
            where_params += [WORKERS, ops.adapt_datetimefield_value(timezone.now())]
            why = "its worker stopped sending heartbeats"
        else:
            where += " AND worker_id = %s"
            where_params.append(worker_id)
            why = "its worker process died" if crashed else "its worker left before it finished"
        if keep:
            pk = TaskRecord._meta.pk
            where += f" AND uuid NOT IN ({', '.join(['%s'] * len(keep))})"
            where_params += [pk.get_db_prep_value(u, connection) for u in keep]
        return self._rescue_where(where, where_params, why)

    def rescue_run(self, task: Task, why: str, *, delay: float = 0.0) -> str | None:
        connection = connections[self.alias]
        where = "status = %s AND worker_id = %s AND uuid = %s"
        params = [
            TaskStatus.PROCESS.value,
            task.worker_id,
            TaskRecord._meta.pk.get_db_prep_value(task.uuid, connection),
        ]
        # INFO: the worker logs the outage that cut the connection once, at WARNING; a
        # restart would otherwise add a warning per running task to that one.
        changed = self._rescue_where(where, params, why, delay=delay, level=logging.INFO)
        return changed[0][1] if changed else None

    def _rescue_where(
        self,
        where: str,
        where_params: list[Any],
        why: str,
        *,
        delay: float = 0.0,
        level: int = logging.WARNING,
    ) -> list[tuple[uuid_lib.UUID, str]]:
        """Send the rows of ``where`` back to waiting, their attempt unspent and their
        ``rescues`` counted, due in ``delay`` seconds; a row already rescued
        ``MAX_RESCUES`` times ends ``error`` instead (a task that keeps killing its
        worker must stop). One statement: safe to run from many workers at once.
        ``level`` is the level of each rescued task's line (a task lost for good is
        always an ERROR)."""
        connection = connections[self.alias]
        allowance = self.settings.max_rescues
        spent = "rescues >= %s"
        rescued = f"Task lost: {why}. Rescued: back to the queue without spending an attempt."
        final = lost_for_good(why, allowance)
        due = connection.ops.adapt_datetimefield_value(timezone.now() + dt.timedelta(seconds=delay))
        message = (f"CASE WHEN {spent} THEN %s ELSE %s END", [allowance, final, rescued])
        # Every expression reads ``rescues`` before its increment (MariaDB evaluates a
        # SET list left to right): the increment comes last.
        assignments: list[tuple[str, Any]] = [
            (f"status = CASE WHEN {spent} THEN %s ELSE %s END",
             [allowance, TaskStatus.ERROR.value, TaskStatus.RETRY.value]),
            (f"finished_at = CASE WHEN {spent} THEN %s ELSE NULL END", [allowance, _NOW]),
            (f"attempt = CASE WHEN {spent} THEN attempt ELSE {ATTEMPT_BEFORE} END", [allowance]),
            ("run_after = %s", [due]),
            (f"traceback = {message[0]}", message[1]),
            ("rescues = rescues + 1", []),
        ]  # fmt: skip
        with transaction.atomic(using=self.alias):
            changed = self._update_with_error(
                assignments, where, where_params, WORKER_LOST, message
            )
            failed = [uuid for uuid, status in changed if status == TaskStatus.ERROR]
            if failed:
                self._cancel_flows_after(failed)
            back = [uuid for uuid, status in changed if status == TaskStatus.RETRY]
            if len(back) > 1:
                self._spread(back, delay)
        for uuid, status in changed:
            if status == TaskStatus.ERROR:
                logger.error(
                    "Task %s lost for good: %s",
                    uuid,
                    final,
                    extra={"action": "lost_for_good", "task_uuid": str(uuid), "status": status},
                )
            else:
                logger.log(
                    level,
                    "Task %s rescued: %s; back to the queue without spending an attempt",
                    uuid,
                    why,
                    extra={"action": "rescue", "task_uuid": str(uuid), "status": status},
                )
        return changed

    def _spread(self, uuids: list[uuid_lib.UUID], delay: float) -> None:
        """Give each of these rescued tasks its own moment within RESCUE_SPREAD seconds.

        Rescued together (one dead worker's), they would be claimed together again, in
        one batch, by one worker: if one of them is what killed the worker, it would
        take the same companions with it every time, until their rescue allowance was
        spent too. Spread out, a task that keeps killing its worker goes down alone.
        """
        connection = connections[self.alias]
        ops = connection.ops
        pk = TaskRecord._meta.pk
        table = ops.quote_name(TaskRecord._meta.db_table)
        start = timezone.now() + dt.timedelta(seconds=delay)
        with connection.cursor() as cursor:
            for at in range(0, len(uuids), 500):
                chunk = [pk.get_db_prep_value(uuid, connection) for uuid in uuids[at : at + 500]]
                params: list[Any] = []
                for uuid in chunk:
                    offset = dt.timedelta(seconds=random.uniform(0, RESCUE_SPREAD))  # noqa: S311
                    params += [uuid, ops.adapt_datetimefield_value(start + offset)]
                marks = ", ".join(["%s"] * len(chunk))
                cursor.execute(
                    f"UPDATE {table} SET run_after = CASE uuid "
                    f"{' '.join(['WHEN %s THEN %s'] * len(chunk))} END "
                    f"WHERE status = '{TaskStatus.RETRY.value}' AND uuid IN ({marks})",
                    [*params, *chunk],
                )

    def release(self, worker_id: str, uuids: Collection[uuid_lib.UUID]) -> int:
        if not uuids:
            return 0
        connection = connections[self.alias]
        ops = connection.ops
        table = ops.quote_name(TaskRecord._meta.db_table)
        pk = TaskRecord._meta.pk
        # A first attempt was `new` before its claim; a later one was `retry`; one that
        # was asked to cancel meanwhile is cancelled (it never ran). run_after is kept:
        # the row goes back to its place in claim order.
        now = ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET status = CASE WHEN cancel_requested THEN %s "
                "WHEN attempt <= 1 THEN %s ELSE %s END, "
                "finished_at = CASE WHEN cancel_requested THEN %s ELSE NULL END, "
                f"attempt = {ATTEMPT_BEFORE}, worker_id = '', started_at = NULL, updated_at = %s "
                f"WHERE uuid IN ({', '.join(['%s'] * len(uuids))}) "
                f"AND status = '{TaskStatus.PROCESS.value}' AND worker_id = %s",
                [
                    TaskStatus.CANCEL.value,
                    TaskStatus.NEW.value,
                    TaskStatus.RETRY.value,
                    now,
                    now,
                    *(pk.get_db_prep_value(uuid, connection) for uuid in uuids),
                    worker_id,
                ],
            )
            return int(cursor.rowcount)

    def cancel(self, uuid: uuid_lib.UUID | str, reason: str = "") -> Task | None:
        pk = TaskRecord._meta.pk.get_db_prep_value(_as_uuid(uuid), connections[self.alias])
        message = reason or "cancelled"
        with transaction.atomic(using=self.alias):
            # A waiting (or blocked) task is cancelled at once: it never runs, and neither
            # do the later steps of its flow.
            cancelled = self._update_with_error(
                [
                    ("status = %s", [TaskStatus.CANCEL]),
                    ("cancel_requested = %s", [True]),
                    ("finished_at = %s", [_NOW]),
                ],
                "uuid = %s AND status IN (%s, %s, %s)",
                [pk, TaskStatus.NEW, TaskStatus.RETRY, TaskStatus.BLOCKED],
                CANCELLED,
                message,
            )
            if cancelled:
                self._cancel_flows_after([uuid for uuid, _status in cancelled])
        # A running task is asked to stop (once); its worker sees the flag within a beat.
        self._update_with_error(
            [("cancel_requested = %s", [True])],
            "uuid = %s AND status = %s AND cancel_requested = %s",
            [pk, TaskStatus.PROCESS, False],
            CANCELLED,
            message,
        )
        return self.get(uuid)

    def cancel_requests(self, worker_id: str) -> set[uuid_lib.UUID]:
        return set(
            self._records()
            .filter(worker_id=worker_id, status=TaskStatus.PROCESS, cancel_requested=True)
            .values_list("uuid", flat=True)
        )

    def requeue(self, uuid: uuid_lib.UUID | str) -> Task | None:
        try:
            with transaction.atomic(using=self.alias):  # a savepoint inside a caller's block
                self._records().filter(
                    uuid=uuid, status__in=[TaskStatus.ERROR, TaskStatus.CANCEL]
                ).update(
                    status=TaskStatus.NEW,
                    run_after=timezone.now(),
                    updated_at=timezone.now(),
                    finished_at=None,
                    cancel_requested=False,
                    max_retries=Greatest(F("max_retries"), F("attempt")),
                )
        except IntegrityError:
            raise TaskConflict(
                f"Task {uuid} cannot go back to the queue: another waiting or running task "
                "of the same name holds its unique_key."
            ) from None
        return self.get(uuid)
