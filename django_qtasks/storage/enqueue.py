"""Enqueue: storing new tasks, one (``add_task``) or many (``add_tasks``).

The hot path of the queue's writes: plain VALUES (prepared once per session where
allowed) for one row, COPY for many on PostgreSQL, one prepared INSERT elsewhere; a
``unique_key`` conflict comes back as the task that holds the key.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from django_qtasks.models import (
    ACTIVE_STATUSES,
    TaskRecord,
)
from django_qtasks.storage.cursors import kept_cursor, session_state_wanted
from django_qtasks.storage.rows import (
    _COPY_COLUMNS,
    _INSERT_COLUMNS,
    _INSERT_CONSTANTS,
    _JSON_COLUMNS,
    _as_is,
    _copy_chunks,
    _insert_fields,
    _new_rows,
    _sql_literal,
    pg_insert_one,
)
from django_qtasks.storage.table import TableStorage
from django_qtasks.values import Task, TaskSpec


class EnqueueMixin(TableStorage):
    """Storing new tasks."""

    def add(self, spec: TaskSpec) -> tuple[Task, bool]:
        if spec.unique_key is None:
            return self._insert([spec])[0], True
        try:
            # A savepoint, so that a duplicate does not break the caller's transaction.
            with transaction.atomic(using=self.alias):
                return self._insert([spec])[0], True
        except IntegrityError:
            # Compared again here: MariaDB's default collations match "A" with "a".
            holders = self._records().filter(
                task_name=spec.task_name, unique_key=spec.unique_key, status__in=ACTIVE_STATUSES
            )
            existing = next((r for r in holders if r.unique_key == spec.unique_key), None)
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
        on PostgreSQL plain VALUES for one row and COPY for many; elsewhere one prepared
        statement run for each row. The snapshots come from the specs, their places in
        a flow (and ``blocked``) included."""
        connection = connections[self.alias]
        tasks: list[Task] = []

        def rows() -> Iterator[tuple[Any, ...]]:
            for task, row in _new_rows(specs, timezone.now()):
                tasks.append(task)
                yield row

        if connection.vendor == "postgresql" and len(specs) == 1:
            self._insert_one(connection, next(rows()))
            return tasks
        ops = connection.ops
        table = ops.quote_name(TaskRecord._meta.db_table)
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # Many rows: COPY, PostgreSQL's bulk path. It takes the values as they
                # are (no SQL text to build and parse), about twice the rate of an
                # INSERT over unnest() arrays; the rows are built as they stream, so
                # the server takes in one chunk while the next is made. It runs on
                # psycopg's own cursor, so it bypasses Django's query logging; it is
                # still one statement, atomic. Its errors are wrapped as Django wraps
                # its cursor's: the same exception types as add_task()'s.
                columns = ", ".join(ops.quote_name(c) for c in _COPY_COLUMNS)
                sql = f"COPY {table} ({columns}) FROM STDIN"
                with connection.wrap_database_errors, cursor.cursor.copy(sql) as copy:
                    for chunk in _copy_chunks(rows()):
                        copy.write(chunk)
            else:
                prepare = [
                    _as_is if field.name in _JSON_COLUMNS else field.get_db_prep_save
                    for field in _insert_fields()
                ]
                values = [
                    [prep(value, connection) for prep, value in zip(prepare, row, strict=True)]
                    for row in rows()
                ]
                names = ", ".join(ops.quote_name(c) for c in (*_INSERT_COLUMNS, *_INSERT_CONSTANTS))
                marks = ", ".join(["%s"] * len(_INSERT_COLUMNS))
                constants = ", ".join(_sql_literal(v) for v in _INSERT_CONSTANTS.values())
                cursor.executemany(
                    f"INSERT INTO {table} ({names}) VALUES ({marks}, {constants})", values
                )
        return tasks

    def _insert_one(self, connection: Any, row: tuple[Any, ...]) -> None:
        """One row, the common ``add_task()``: plain VALUES (about half the parse and
        plan of unnest() over one-element arrays), prepared once per session where the
        settings allow (PostgreSQL then only binds and runs it: about a third less
        time on the server before the commit)."""
        prepare = session_state_wanted(self.settings.prepared_statements, self.alias)
        kept_cursor(connection, prepare=prepare).execute(*pg_insert_one(row))
