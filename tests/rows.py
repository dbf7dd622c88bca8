"""Rows written straight into the task table, as a careless script, another program or
a newer release of the queue would: values the ORM and enqueueing would refuse."""

from __future__ import annotations

from django.db import DatabaseError, connection, transaction

from django_qtasks.models import TaskRecord


def set_column(task_uuid: object, column: str, value: object, *, json: bool = False) -> None:
    """Write ``value`` into one column of one row with raw SQL (``json``: the value is
    JSON text, cast to jsonb on PostgreSQL)."""
    quote = connection.ops.quote_name
    table, column = quote(TaskRecord._meta.db_table), quote(column)
    cast = "CAST(%s AS jsonb)" if json and connection.vendor == "postgresql" else "%s"
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {column} = {cast} WHERE uuid = %s",
            [value, TaskRecord._meta.pk.get_db_prep_value(task_uuid, connection)],
        )


def written(task_uuid: object, column: str, value: object, *, json: bool = False) -> bool:
    """Whether the database took the value: PostgreSQL's jsonb and MariaDB's JSON check
    refuse some of what SQLite's text keeps (the database is then the guard itself), and
    no driver sends a lone surrogate."""
    try:
        with transaction.atomic():
            set_column(task_uuid, column, value, json=json)
    except (DatabaseError, UnicodeEncodeError):
        return False
    return True


def nested(depth: int) -> str:
    """JSON text of a list nested ``depth`` deep around a 0."""
    return "[" * depth + "0" + "]" * depth
