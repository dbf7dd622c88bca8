"""Storage: every database operation on the task table lives here.

The claim is one statement that selects waiting rows in claim order, locks them
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and marks them ``process`` with the
worker's id: no transaction stays open while a task runs. On SQLite the same
``UPDATE ... RETURNING`` takes the write lock when it starts, so two workers never
claim one task.
"""

from __future__ import annotations

import logging
import uuid as uuid_lib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from .exceptions import ConfigurationError
from .global_config import BaseGlobalConfig
from .models import ACTIVE_STATUSES, TaskRecord, TaskStatus
from .settings import QTasksSettings
from .signals import component_started, component_stopped
from .task import Outcome, Task, TaskSpec

logger = logging.getLogger("django_qtasks.storage")

SUPPORTED_VENDORS = ("postgresql", "sqlite")


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
    def add(self, spec: TaskSpec) -> Task:
        """Store a new task on the caller's connection (inside its transaction, if any)."""

    @abstractmethod
    def get(self, uuid: uuid_lib.UUID | str) -> Task | None: ...

    @abstractmethod
    def claim(self, worker_id: str, queues: Sequence[str] | None, limit: int) -> list[Task]:
        """Mark up to ``limit`` ready tasks ``process`` for this worker and return them,
        in claim order (higher priority first, then older ``run_after``)."""

    @abstractmethod
    def finish(self, task: Task, outcome: Outcome) -> bool:
        """Store how an attempt ended. False if the task was no longer this worker's."""

    @abstractmethod
    def set_progress(self, uuid: uuid_lib.UUID, progress: dict[str, Any]) -> None: ...


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

    def add(self, spec: TaskSpec) -> Task:
        now = timezone.now()
        record = TaskRecord(
            task_name=spec.task_name,
            queue=spec.queue,
            priority=spec.priority,
            args=spec.args,
            kwargs=spec.kwargs,
            max_retries=spec.max_retries,
            run_after=spec.run_after or now,
            created_at=now,
            updated_at=now,
            unique_key=spec.unique_key,
            tags=spec.tags,
        )
        if spec.unique_key is None:
            record.save(force_insert=True, using=self.alias)
            return Task.from_record(record)
        try:
            # A savepoint, so that a duplicate does not break the caller's transaction.
            with transaction.atomic(using=self.alias):
                record.save(force_insert=True, using=self.alias)
        except IntegrityError:
            existing = (
                self._records()
                .filter(unique_key=spec.unique_key, status__in=ACTIVE_STATUSES)
                .first()
            )
            if existing is None:
                raise
            return Task.from_record(existing)
        return Task.from_record(record)

    def get(self, uuid: uuid_lib.UUID | str) -> Task | None:
        record = self._records().filter(uuid=uuid).first()
        return None if record is None else Task.from_record(record)

    def claim(self, worker_id: str, queues: Sequence[str] | None, limit: int) -> list[Task]:
        if limit <= 0:
            return []
        connection = connections[self.alias]
        table = connection.ops.quote_name(TaskRecord._meta.db_table)
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        where = "status IN (%s, %s) AND run_after <= %s"
        params: list[Any] = [TaskStatus.NEW.value, TaskStatus.RETRY.value, now]
        if queues:
            where += f" AND queue IN ({', '.join(['%s'] * len(queues))})"
            params.extend(queues)
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

    def finish(self, task: Task, outcome: Outcome) -> bool:
        now = timezone.now()
        changes: dict[str, Any] = {"status": outcome.status, "updated_at": now}
        if outcome.status == TaskStatus.SUCCESS:
            changes["returning"] = outcome.returning
        if outcome.error is not None:
            entry = {
                "attempt": task.attempt,
                "at": now.isoformat(),
                **outcome.error,
                "traceback": outcome.traceback,
            }
            changes["errors"] = [*task.errors, entry]
            changes["traceback"] = outcome.traceback
        if outcome.status == TaskStatus.RETRY:
            changes["run_after"] = outcome.run_after or now
        else:
            changes["finished_at"] = now
        updated = (
            self._records()
            .filter(uuid=task.uuid, status=TaskStatus.PROCESS, worker_id=task.worker_id)
            .update(**changes)
        )
        if not updated:
            logger.warning(
                "Task %s was no longer held by worker %s; its %s result was not stored.",
                task.uuid,
                task.worker_id,
                outcome.status,
                extra={"action": "finish_lost", "task_uuid": str(task.uuid)},
            )
        return bool(updated)

    def set_progress(self, uuid: uuid_lib.UUID, progress: dict[str, Any]) -> None:
        self._records().filter(uuid=uuid).update(progress=progress, updated_at=timezone.now())
