"""Storage: every database operation on the task table lives here.

The claim is one statement that selects waiting rows in claim order, locks them
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and marks them ``process`` with the
worker's id: no transaction stays open while a task runs. On SQLite the same
``UPDATE ... RETURNING`` takes the write lock when it starts, so two workers never
claim one task.
"""

from __future__ import annotations

import json
import logging
import uuid as uuid_lib
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from .exceptions import ConfigurationError, TaskConflict
from .global_config import BaseGlobalConfig
from .models import ACTIVE_STATUSES, ConfigEntry, TaskRecord, TaskStatus, uuid7
from .settings import QTasksSettings
from .signals import component_started, component_stopped
from .task import Outcome, Task, TaskSpec

logger = logging.getLogger("django_qtasks.storage")

SUPPORTED_VENDORS = ("postgresql", "sqlite")
WORKERS = "workers"  # the GlobalConfig name under which workers keep their heartbeats
QUEUES = "queues"  # ... and under which paused queues are flagged
WORKER_LOST = "django_qtasks.exceptions.WorkerLost"
CANCELLED = "django_qtasks.exceptions.TaskCancelled"
# What a new row's INSERT fills from the task, then the constants of a new task.
_INSERT_COLUMNS = (
    "uuid", "task_name", "queue", "priority", "status", "args", "kwargs", "errors",
    "max_retries", "run_after", "created_at", "updated_at", "unique_key", "tags",
)  # fmt: skip
_PG_ARRAY_TYPES = (
    "uuid", "text", "text", "smallint", "text", "text", "text", "text",
    "integer", "timestamptz", "timestamptz", "timestamptz", "text", "text",
)  # fmt: skip
_JSON_POSITIONS = frozenset({5, 6, 7, 13})
_INSERT_CONSTANTS = {
    "returning": "NULL",
    "traceback": "''",
    "attempt": "0",
    "started_at": "NULL",
    "finished_at": "NULL",
    "worker_id": "''",
    "cancel_requested": "FALSE",
    "progress": "NULL",
}


def _insert_fields() -> list[Any]:
    return [TaskRecord._meta.get_field(name) for name in _INSERT_COLUMNS]


_NOW = object()  # stands for "the time of the statement" in _update_with_error


class BaseStorage(ABC):
    """The interface every Storage implements. It owns (and starts) GlobalConfig."""

    component_name = "storage"

    def __init__(self, settings: QTasksSettings, global_config: BaseGlobalConfig) -> None:
        self.settings = settings
        self.global_config = global_config

    def start(self) -> None:
        component_started.send(sender=type(self), component=self, name=self.component_name)
        self.global_config.start()

    def stop(self) -> None:
        self.global_config.stop()
        component_stopped.send(sender=type(self), component=self, name=self.component_name)

    @abstractmethod
    def add(self, spec: TaskSpec) -> tuple[Task, bool]:
        """Store a new task on the caller's connection (inside its transaction, if any).

        Returns the task and whether it was created: with a ``unique_key`` already held
        by a waiting or running task of the same name, that task comes back instead."""

    @abstractmethod
    def add_many(self, specs: Sequence[TaskSpec]) -> list[Task]:
        """Store many new tasks at once, all or none (one transaction)."""

    @abstractmethod
    def get(self, uuid: uuid_lib.UUID | str) -> Task | None: ...

    @abstractmethod
    def claim(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        *,
        exclude: Collection[str] = (),
    ) -> list[Task]:
        """Mark up to ``limit`` ready tasks ``process`` for this worker and return them,
        in claim order (higher priority first, then older ``run_after``). ``queues``
        limits the queues (``None``: all); ``exclude`` names paused ones."""

    @abstractmethod
    def requeue(self, uuid: uuid_lib.UUID | str) -> Task | None:
        """Put a failed or cancelled task back to waiting, allowing one more attempt."""

    @abstractmethod
    def finish_many(self, items: Sequence[tuple[Task, Outcome]]) -> list[bool]:
        """Store how attempts ended, all in one transaction; for each, False if the task
        was no longer this worker's (rescued or cancelled meanwhile): nothing changes then.
        """

    def finish(self, task: Task, outcome: Outcome) -> bool:
        return self.finish_many([(task, outcome)])[0]

    @abstractmethod
    def set_progress(self, uuid: uuid_lib.UUID, progress: dict[str, Any]) -> None: ...

    @abstractmethod
    def rescue(
        self,
        worker_id: str | None = None,
        *,
        crashed: bool = True,
        keep: Collection[uuid_lib.UUID] = (),
    ) -> list[tuple[uuid_lib.UUID, str]]:
        """Put running tasks whose worker is gone back to ``retry``, recording why;
        returns ``(uuid, new status)`` pairs. Safe to run from many processes at once.

        Without ``worker_id``: every task whose worker has no live heartbeat. With it:
        that worker's tasks (but those in ``keep``), whatever its heartbeat.
        ``crashed`` tasks spend their attempt and end ``error`` when none is left, so a
        task that keeps killing its worker stops; tasks handed back (``crashed=False``)
        keep their attempt.
        """

    @abstractmethod
    def cancel(self, uuid: uuid_lib.UUID | str, reason: str = "") -> Task | None:
        """Cancel a waiting task at once; ask a running one to stop (``cancel_requested``)."""

    @abstractmethod
    def cancel_requests(self, worker_id: str) -> set[uuid_lib.UUID]:
        """The running tasks of this worker that someone asked to cancel."""


class DjangoStorage(BaseStorage):
    """Storage on the ``TaskRecord`` model."""

    @property
    def alias(self) -> str:
        return self.settings.database

    def _records(self) -> Any:
        return TaskRecord.objects.using(self.alias)

    def start(self) -> None:
        vendor = connections[self.alias].vendor
        if vendor not in SUPPORTED_VENDORS:
            raise ConfigurationError(
                f"QTASKS['DATABASE'] {self.alias!r} is {vendor}; django-qtasks supports "
                f"{' and '.join(SUPPORTED_VENDORS)}."
            )
        super().start()

    def add(self, spec: TaskSpec) -> tuple[Task, bool]:
        if spec.unique_key is None:
            return self._insert([spec])[0], True
        try:
            # A savepoint, so that a duplicate does not break the caller's transaction.
            with transaction.atomic(using=self.alias):
                return self._insert([spec])[0], True
        except IntegrityError:
            existing = (
                self._records()
                .filter(
                    task_name=spec.task_name,
                    unique_key=spec.unique_key,
                    status__in=ACTIVE_STATUSES,
                )
                .first()
            )
            if existing is None:
                raise
            return Task.from_record(existing), False

    def add_many(self, specs: Sequence[TaskSpec]) -> list[Task]:
        if any(spec.unique_key is not None for spec in specs):
            return [self.add(spec)[0] for spec in specs]
        with transaction.atomic(using=self.alias):
            return self._insert(specs)

    def _insert(self, specs: Sequence[TaskSpec]) -> list[Task]:
        """INSERT the rows without building model instances (the enqueue path is hot):
        on PostgreSQL one statement over arrays, whatever the count; elsewhere one
        prepared statement run for each row. The snapshots come from the specs."""
        connection = connections[self.alias]
        now = timezone.now()
        tasks = [
            Task(
                uuid=uuid7(),
                task_name=spec.task_name,
                status=TaskStatus.NEW.value,
                priority=spec.priority,
                queue=spec.queue,
                args=spec.args,
                kwargs=spec.kwargs,
                returning=None,
                traceback="",
                errors=[],
                attempt=0,
                max_retries=spec.max_retries,
                run_after=spec.run_after or now,
                created_at=now,
                updated_at=now,
                started_at=None,
                finished_at=None,
                worker_id="",
                unique_key=spec.unique_key,
                cancel_requested=False,
                progress=None,
                tags=spec.tags,
            )
            for spec in specs
        ]
        ops = connection.ops
        table = ops.quote_name(TaskRecord._meta.db_table)
        names = ", ".join(ops.quote_name(c) for c in (*_INSERT_COLUMNS, *_INSERT_CONSTANTS))
        constants = ", ".join(_INSERT_CONSTANTS.values())
        columns = [[getattr(task, name) for task in tasks] for name in _INSERT_COLUMNS]
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                for position in _JSON_POSITIONS:
                    columns[position] = [json.dumps(value) for value in columns[position]]
                arrays = ", ".join(f"%s::{sql_type}[]" for sql_type in _PG_ARRAY_TYPES)
                selected = ", ".join(
                    f"c{n}::jsonb" if n in _JSON_POSITIONS else f"c{n}"
                    for n in range(len(_INSERT_COLUMNS))
                )
                aliases = ", ".join(f"c{n}" for n in range(len(_INSERT_COLUMNS)))
                cursor.execute(
                    f"INSERT INTO {table} ({names}) SELECT {selected}, {constants} "
                    f"FROM unnest({arrays}) AS u({aliases})",
                    columns,
                )
            else:
                prepare = [field.get_db_prep_save for field in _insert_fields()]
                rows = [
                    [prep(value, connection) for prep, value in zip(prepare, row, strict=True)]
                    for row in zip(*columns, strict=True)
                ]
                marks = ", ".join(["%s"] * len(_INSERT_COLUMNS))
                cursor.executemany(
                    f"INSERT INTO {table} ({names}) VALUES ({marks}, {constants})", rows
                )
        return tasks

    def get(self, uuid: uuid_lib.UUID | str) -> Task | None:
        record = self._records().filter(uuid=uuid).first()
        return None if record is None else Task.from_record(record)

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        *,
        exclude: Collection[str] = (),
    ) -> list[Task]:
        if limit <= 0:
            return []
        connection = connections[self.alias]
        table = connection.ops.quote_name(TaskRecord._meta.db_table)
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        # The statuses are literals, as in the partial index's condition: SQLite uses a
        # partial index only when the query repeats that condition word for word.
        where = (
            f"status IN ('{TaskStatus.NEW.value}', '{TaskStatus.RETRY.value}') AND run_after <= %s"
        )
        params: list[Any] = [now]
        if queues:
            where += f" AND queue IN ({', '.join(['%s'] * len(queues))})"
            params.extend(queues)
        if exclude:
            where += f" AND queue NOT IN ({', '.join(['%s'] * len(exclude))})"
            params.extend(exclude)
        lock = (
            " FOR UPDATE SKIP LOCKED"
            if connection.features.has_select_for_update_skip_locked
            else ""
        )
        sql = (
            f"UPDATE {table} SET status = %s, worker_id = %s, attempt = attempt + 1, "
            f"started_at = %s, updated_at = %s "
            f"WHERE uuid IN (SELECT uuid FROM {table} WHERE {where} "
            f"ORDER BY priority DESC, run_after, created_at LIMIT %s{lock}) "
            f"RETURNING *"
        )
        all_params = [TaskStatus.PROCESS.value, worker_id, now, now, *params, limit]
        records = list(self._records().raw(sql, all_params))
        records.sort(key=lambda r: (-r.priority, r.run_after, r.created_at))
        return [Task.from_record(r) for r in records]

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
                    {"attempt": task.attempt, "at": now.isoformat(), **outcome.error,
                     "traceback": outcome.traceback}
                )  # fmt: skip
            success = outcome.status == TaskStatus.SUCCESS
            retry = outcome.status == TaskStatus.RETRY
            rows.append(
                (
                    task.uuid,
                    task.worker_id,
                    str(outcome.status),
                    json.dumps(outcome.returning)
                    if success and outcome.returning is not None
                    else None,
                    entry,
                    outcome.traceback if entry is not None else None,
                    (outcome.run_after or now) if retry else None,
                    None if retry else now,
                )
            )
        # One transaction (one commit, one fsync) for the whole batch.
        with transaction.atomic(using=self.alias), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                stored = self._finish_pg(cursor, rows, now)
            else:
                stored = self._finish_sqlite(cursor, rows, now)
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

    def _finish_sqlite(self, cursor: Any, rows: list[tuple[Any, ...]], now: Any) -> set[Any]:
        """One prepared UPDATE per row (SQLite prepares it once), in one transaction."""
        connection = connections[self.alias]
        ops = connection.ops
        meta = TaskRecord._meta
        table = ops.quote_name(meta.db_table)
        errors_sql = _errors_plus("sqlite", "json(%s)")
        db_now = ops.adapt_datetimefield_value(now)
        params = [
            [
                status, ret, entry, entry, tb,
                ops.adapt_datetimefield_value(run_after) if run_after else None,
                ops.adapt_datetimefield_value(finished_at) if finished_at else None,
                db_now, meta.pk.get_db_prep_value(uuid, connection), worker_id,
            ]
            for uuid, worker_id, status, ret, entry, tb, run_after, finished_at in rows
        ]  # fmt: skip
        cursor.executemany(
            f'UPDATE {table} SET status = %s, "returning" = %s, '
            f"errors = CASE WHEN %s IS NULL THEN errors ELSE {errors_sql} END, "
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

    def _update_with_error(
        self,
        assignments: list[tuple[str, Any]],
        where: str,
        where_params: list[Any],
        error_type: str,
        message: str,
    ) -> list[tuple[uuid_lib.UUID, str]]:
        """One ``UPDATE`` that also appends an entry to ``errors``; returns (uuid, status).

        ``assignments`` are ``(sql, params)`` pairs; ``%(now)s`` in them is the time now.
        All expressions read the row as it was, so the entry records the attempt that
        was running.
        """
        connection = connections[self.alias]
        vendor = connection.vendor
        now = timezone.now()
        db_now = connection.ops.adapt_datetimefield_value(now)
        build = "jsonb_build_object" if vendor == "postgresql" else "json_object"
        entry = f"{build}('attempt', attempt, 'at', %s, 'type', %s, 'message', %s, 'traceback', '')"
        errors_sql = _errors_plus(vendor, entry)
        sets: list[str] = []
        params: list[Any] = []
        for sql, values in [*assignments, ("updated_at = %s", [db_now])]:
            sets.append(sql)
            params.extend(db_now if value is _NOW else value for value in values)
        table = connection.ops.quote_name(TaskRecord._meta.db_table)
        statement = (
            f"UPDATE {table} SET {', '.join(sets)}, errors = {errors_sql} "
            f"WHERE {where} RETURNING uuid, status"
        )
        params += [now.isoformat(), error_type, message, *where_params]
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return [(_as_uuid(uuid), status) for uuid, status in cursor.fetchall()]

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
        if crashed:
            left = "attempt <= max_retries"
            assignments: list[tuple[str, Any]] = [
                (
                    f"status = CASE WHEN {left} THEN %s ELSE %s END",
                    [TaskStatus.RETRY, TaskStatus.ERROR],
                ),
                (f"finished_at = CASE WHEN {left} THEN NULL ELSE %s END", [_NOW]),
            ]
        else:
            assignments = [("status = %s", [TaskStatus.RETRY]), ("attempt = attempt - 1", [])]
        message = f"Task lost: {why}."
        assignments += [("run_after = %s", [_NOW]), ("traceback = %s", [message])]
        rescued = self._update_with_error(assignments, where, where_params, WORKER_LOST, message)
        for uuid, status in rescued:
            logger.warning(
                "Task %s rescued to %r: %s",
                uuid,
                status,
                why,
                extra={"action": "rescue", "task_uuid": str(uuid), "status": status},
            )
        return rescued

    def cancel(self, uuid: uuid_lib.UUID | str, reason: str = "") -> Task | None:
        pk = TaskRecord._meta.pk.get_db_prep_value(_as_uuid(uuid), connections[self.alias])
        message = reason or "cancelled"
        # A waiting task is cancelled at once: it never runs.
        self._update_with_error(
            [
                ("status = %s", [TaskStatus.CANCEL]),
                ("cancel_requested = %s", [True]),
                ("finished_at = %s", [_NOW]),
            ],
            "uuid = %s AND status IN (%s, %s)",
            [pk, TaskStatus.NEW, TaskStatus.RETRY],
            CANCELLED,
            message,
        )
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


def _errors_plus(vendor: str, entry_sql: str) -> str:
    """SQL for the ``errors`` column with one more entry (an SQL JSON object) appended,
    in place: a concurrent append (a cancel request) is never overwritten."""
    if vendor == "postgresql":
        return f"errors || jsonb_build_array({entry_sql})"
    return f"json_insert(errors, '$[#]', {entry_sql})"


def _as_uuid(value: Any) -> uuid_lib.UUID:
    return value if isinstance(value, uuid_lib.UUID) else uuid_lib.UUID(str(value))
