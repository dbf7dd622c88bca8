"""The ground every statement of :class:`~django_qtasks.storage.DjangoStorage` stands on.

``TableStorage`` is ``BaseStorage`` on the ``TaskRecord`` table: the database alias,
the supported vendors, reading one task, and the ``UPDATE`` that also appends an entry
to a task's error history (rescue, cancel and flows all record why a task changed that
way, so it lives below them). The concept modules (enqueue, claim, finish, rescue,
flows, schedules, pruning) each add their statements to it as a mixin.
"""

from __future__ import annotations

import uuid as uuid_lib
from typing import Any

from django.db import connections
from django.utils import timezone

from django_qtasks.exceptions import ConfigurationError
from django_qtasks.models import (
    TaskRecord,
)
from django_qtasks.storage.interface import BaseStorage
from django_qtasks.storage.rows import _as_uuid
from django_qtasks.values import Task

SUPPORTED_VENDORS = ("postgresql", "mysql", "sqlite")


def supported_vendor_list() -> str:
    """The supported databases as a sentence says them."""
    return ", ".join(SUPPORTED_VENDORS[:-1]) + " and " + SUPPORTED_VENDORS[-1]


WORKER_LOST = "django_qtasks.exceptions.WorkerLost"
CANCELLED = "django_qtasks.exceptions.TaskCancelled"
# A message for an error entry: plain text, or an SQL expression and its parameters.
Message = str | tuple[str, list[Any]]
_NOW = object()  # stands for "the time of the statement" in _update_with_error
# The attempt before the claim that made it, for a run handed back unspent (rescued,
# released, a claim undone). Never below 0: a `process` row at attempt 0 (written by
# hand, or by an older version) would break the column's constraint (MariaDB's unsigned
# column refuses even to compute ``0 - 1``) and fail the whole statement, every time.
ATTEMPT_BEFORE = "CASE WHEN attempt > 0 THEN attempt - 1 ELSE 0 END"


class TableStorage(BaseStorage):
    """Storage on the ``TaskRecord`` model: what every concept's statements share."""

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
                f"{supported_vendor_list()}."
            )
        super().start()

    def get(self, uuid: uuid_lib.UUID | str) -> Task | None:
        record = self._records().filter(uuid=uuid).first()
        return None if record is None else Task.from_record(record)

    def _update_with_error(
        self,
        assignments: list[tuple[str, Any]],
        where: str,
        where_params: list[Any],
        error_type: str,
        message: Message,
    ) -> list[tuple[uuid_lib.UUID, str]]:
        """One ``UPDATE`` that also appends an entry to ``errors``; returns (uuid, status).

        ``assignments`` are ``(sql, params)`` pairs; ``%(now)s`` in them is the time now.
        All expressions read the row as it was, so the entry records the attempt that
        was running.
        """
        connection = connections[self.alias]
        sets, params = self._error_update_sets(assignments, error_type, message)
        table = connection.ops.quote_name(TaskRecord._meta.db_table)
        statement = f"UPDATE {table} SET {sets} WHERE {where} RETURNING uuid, status"
        with connection.cursor() as cursor:
            cursor.execute(statement, [*params, *where_params])
            return [(_as_uuid(uuid), status) for uuid, status in cursor.fetchall()]

    def _error_update_sets(
        self, assignments: list[tuple[str, Any]], error_type: str, message: Message
    ) -> tuple[str, list[Any]]:
        """The SET list of :meth:`_update_with_error` and its parameters. The error
        entry comes first: MariaDB evaluates a SET list left to right (each assignment
        sees those before it), the others all from the row as it was. ``message`` is
        a string, or an SQL expression and its parameters (one message per row)."""
        connection = connections[self.alias]
        vendor = connection.vendor
        now = timezone.now()
        db_now = connection.ops.adapt_datetimefield_value(now)
        build = {"postgresql": "jsonb_build_object", "mysql": "JSON_OBJECT"}.get(
            vendor, "json_object"
        )
        message_sql, message_params = ("%s", [message]) if isinstance(message, str) else message
        entry = (
            f"{build}('attempt', attempt, 'at', %s, 'worker_id', worker_id, 'type', %s, "
            f"'message', {message_sql}, 'traceback', '')"
        )
        sets = [f"errors = {_errors_plus(vendor, entry)}"]
        params: list[Any] = [now.isoformat(), error_type, *message_params]
        for sql, values in [*assignments, ("updated_at = %s", [db_now])]:
            sets.append(sql)
            params.extend(db_now if value is _NOW else value for value in values)
        return ", ".join(sets), params


def _errors_plus(vendor: str, entry_sql: str) -> str:
    """SQL for the ``errors`` column with one more entry (an SQL JSON object) appended,
    in place: a concurrent append (a cancel request) is never overwritten."""
    return _json_append(vendor, "errors", entry_sql)


def _json_append(vendor: str, column: str, value_sql: str) -> str:
    """SQL for the JSON array in ``column`` with one more element (a JSON value)."""
    if vendor == "postgresql":
        return f"{column} || jsonb_build_array({value_sql})"
    if vendor == "mysql":
        return f"JSON_ARRAY_APPEND({column}, '$', {value_sql})"
    return f"json_insert({column}, '$[#]', {value_sql})"


def _json_param(vendor: str) -> str:
    """A placeholder for JSON text, as a JSON value of the database (not a string)."""
    return {"postgresql": "%s::jsonb", "mysql": "JSON_EXTRACT(%s, '$')"}.get(vendor, "json(%s)")
