"""Rows: how a task becomes the values of an INSERT and how a claimed row becomes a snapshot.

The enqueue path is hot, so new rows are built as plain tuples (no model instances),
in a column order fixed here once, and written as PostgreSQL's COPY text, as one
prepared INSERT, or as portable VALUES. The claim reads back only the columns it does
not know already and decodes them here. Kept apart from the statements that use them
so that the encoding has one home, shared by enqueue, flows, schedules and MariaDB.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import operator
import uuid as uuid_lib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from django_qtasks.exceptions import InvalidTaskCall
from django_qtasks.models import (
    TaskRecord,
    TaskStatus,
    uuid7s,
)
from django_qtasks.storage.arguments import MAX_DEPTH, check_json, check_value
from django_qtasks.values import Task, TaskSpec

# What a new row's INSERT fills from the task (with its PostgreSQL type), then the
# constants of every new task.
_INSERT_TYPES = {
    "uuid": "uuid", "task_name": "text", "queue": "text", "priority": "smallint",
    "status": "text", "args": "jsonb", "kwargs": "jsonb", "max_retries": "integer",
    "run_after": "timestamptz", "created_at": "timestamptz", "updated_at": "timestamptz",
    "unique_key": "text", "tags": "jsonb", "concurrency_key": "text",
    "max_concurrency": "integer", "flow_id": "uuid", "flow_stage": "integer",
    "flow_index": "integer",
}  # fmt: skip
_INSERT_COLUMNS = tuple(_INSERT_TYPES)
# JSON columns go in as JSON text, encoded once (args and kwargs by the spec builder).
_JSON_COLUMNS = frozenset(name for name, type_ in _INSERT_TYPES.items() if type_ == "jsonb")
_PG_ONE_ROW = ", ".join(f"%s::{sql_type}" for sql_type in _INSERT_TYPES.values())


def _as_is(value: Any, connection: Any) -> Any:
    return value


_INSERT_CONSTANTS: dict[str, Any] = {
    "returning": None,
    "traceback": "",
    "errors": "[]",  # JSON text, as the other JSON columns
    "attempt": 0,
    "started_at": None,
    "finished_at": None,
    "worker_id": "",
    "cancel_requested": False,
    "progress": None,
}


def _sql_literal(value: Any) -> str:
    """A constant of ``_INSERT_CONSTANTS`` as SQL (COPY takes the values themselves)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(int(value))


# COPY's text format: tab-separated, \N for NULL, backslash escapes.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_CHUNK = 1000  # rows per write: big enough to amortise, small enough to stream


def _copy_text(value: Any) -> str:
    """One value of an INSERT row in COPY's text format."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)  # int, UUID


def _tags_json(tags: Sequence[str]) -> str:
    """A task's tags as stored. The few distinct lists (they come from the tasks'
    options, checked at registration) are encoded once per process, not once per
    task; a hand-made TaskSpec's are checked here, once per distinct list."""
    try:
        if not isinstance(tags, str):
            return _encoded_tags(tuple(tags))
    except TypeError:  # not iterable, not hashable, or not all strings
        pass
    raise InvalidTaskCall(f"tags must be a list of strings, got {tags!r}.")


@functools.lru_cache(maxsize=256)
def _encoded_tags(tags: tuple[str, ...]) -> str:
    if not all(isinstance(tag, str) for tag in tags):
        raise TypeError("not all strings")
    return json.dumps(list(tags))


def _new_rows(
    specs: Sequence[TaskSpec], now: dt.datetime
) -> Iterator[tuple[Task, tuple[Any, ...]]]:
    """Each new task's snapshot and its INSERT row (in _INSERT_COLUMNS order)."""
    for spec, uuid in zip(specs, uuid7s(len(specs)), strict=True):
        status = (TaskStatus.BLOCKED if spec.blocked else TaskStatus.NEW).value
        run_after = spec.run_after or now
        # The spec builder encoded (and checked) the arguments; a spec made elsewhere
        # goes through the same check.
        encoded = spec.encoded or check_json(spec.args, spec.kwargs, None)
        row = (
            uuid, spec.task_name, spec.queue, spec.priority, status, encoded[0],
            encoded[1], spec.max_retries, run_after, now, now, spec.unique_key,
            _tags_json(spec.tags), spec.concurrency_key, spec.max_concurrency, spec.flow_id,
            spec.flow_stage, spec.flow_index,
        )  # fmt: skip
        task = Task.from_fields(
            {
                "uuid": uuid,
                "task_name": spec.task_name,
                "status": status,
                "priority": spec.priority,
                "queue": spec.queue,
                "args": spec.args,
                "kwargs": spec.kwargs,
                "returning": None,
                "traceback": "",
                "errors": [],
                "attempt": 0,
                "max_retries": spec.max_retries,
                "run_after": run_after,
                "created_at": now,
                "updated_at": now,
                "started_at": None,
                "finished_at": None,
                "worker_id": "",
                "unique_key": spec.unique_key,
                "cancel_requested": False,
                "progress": None,
                "tags": spec.tags,
                "concurrency_key": spec.concurrency_key,
                "max_concurrency": spec.max_concurrency,
                "flow_id": spec.flow_id,
                "flow_stage": spec.flow_stage,
                "flow_index": spec.flow_index,
            }
        )
        yield task, row


# The COPY's column order: what differs in every row first, then the columns whose
# values repeat across a bulk enqueue, then the constants.
_COPY_FIRST = ("uuid", "args", "kwargs")
_COPY_REST = tuple(name for name in _INSERT_COLUMNS if name not in _COPY_FIRST)
_COPY_COLUMNS = (*_COPY_FIRST, *_COPY_REST, *_INSERT_CONSTANTS)


def _copy_chunks(rows: Iterable[tuple[Any, ...]]) -> Iterator[str]:
    """The rows (tuples in _INSERT_COLUMNS order) as COPY text in _COPY_COLUMNS order,
    in chunks.

    Formatting here beats psycopg's per-value row writer several times over: the part
    of a line after the arguments (task name, queue, times, tags, constants) is the
    same for most rows of a bulk enqueue, and is formatted once per distinct value.
    The JSON columns hold text from ``json.dumps``, which never contains a raw tab or
    line break: only backslashes need doubling."""
    uuid_at, args_at, kwargs_at = (_INSERT_COLUMNS.index(name) for name in _COPY_FIRST)
    rest_of = operator.itemgetter(*(_INSERT_COLUMNS.index(name) for name in _COPY_REST))
    constants = "".join("\t" + _copy_text(value) for value in _INSERT_CONSTANTS.values())
    rests: dict[tuple[Any, ...], str] = {}
    lines: list[str] = []
    for row in rows:
        key = rest_of(row)
        rest = rests.get(key)
        if rest is None:
            rest = rests[key] = "".join("\t" + _copy_text(v) for v in key) + constants + "\n"
        args, kwargs = row[args_at], row[kwargs_at]
        if "\\" in args:
            args = args.replace("\\", "\\\\")
        if "\\" in kwargs:
            kwargs = kwargs.replace("\\", "\\\\")
        lines.append(f"{row[uuid_at]}\t{args}\t{kwargs}{rest}")
        if len(lines) >= _COPY_CHUNK:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


@functools.cache
def _pg_insert_one_sql() -> str:
    """The one-row INSERT on PostgreSQL, built once (the same text each time, as a
    prepared statement needs)."""
    names = ", ".join(f'"{c}"' for c in (*_INSERT_COLUMNS, *_INSERT_CONSTANTS))
    constants = ", ".join(_sql_literal(value) for value in _INSERT_CONSTANTS.values())
    table = TaskRecord._meta.db_table
    return f'INSERT INTO "{table}" ({names}) VALUES ({_PG_ONE_ROW}, {constants})'


# The common new task (no unique_key, concurrency limit or flow, due now) has one
# statement of its own with 9 parameters instead of 18: the NULLs and its status are
# literals, and one timestamp fills run_after, created_at and updated_at. Each bound
# parameter costs psycopg a dump and the server an input conversion, every call.
_PLAIN = {
    "uuid": 0,
    "name": 1,
    "queue": 2,
    "priority": 3,
    "args": 5,
    "kwargs": 6,
    "retries": 7,
    "now": 9,
    "tags": 12,
}  # fmt: skip  (parameter name: its position in an _INSERT_COLUMNS row)
_PLAIN_VALUES = {
    "uuid": "%(uuid)s::uuid", "task_name": "%(name)s::text", "queue": "%(queue)s::text",
    "priority": "%(priority)s::smallint", "status": f"'{TaskStatus.NEW.value}'",
    "args": "%(args)s::jsonb", "kwargs": "%(kwargs)s::jsonb",
    "max_retries": "%(retries)s::integer", "run_after": "%(now)s::timestamptz",
    "created_at": "%(now)s::timestamptz", "updated_at": "%(now)s::timestamptz",
    "unique_key": "NULL", "tags": "%(tags)s::jsonb", "concurrency_key": "NULL",
    "max_concurrency": "NULL", "flow_id": "NULL", "flow_stage": "NULL",
    "flow_index": "NULL",
}  # fmt: skip
# Row positions (in _INSERT_COLUMNS order) that must be NULL for the plain statement.
_PLAIN_NULLS = tuple(
    index for index, name in enumerate(_INSERT_COLUMNS) if _PLAIN_VALUES[name] == "NULL"
)


@functools.cache
def _pg_insert_plain_sql() -> str:
    names = ", ".join(f'"{c}"' for c in (*_INSERT_COLUMNS, *_INSERT_CONSTANTS))
    values = [_PLAIN_VALUES[name] for name in _INSERT_COLUMNS]
    values += [_sql_literal(value) for value in _INSERT_CONSTANTS.values()]
    table = TaskRecord._meta.db_table
    return f'INSERT INTO "{table}" ({names}) VALUES ({", ".join(values)})'


def pg_insert_one(row: tuple[Any, ...]) -> tuple[str, Any]:
    """The one-row INSERT of ``row`` on PostgreSQL and its parameters: the plain
    statement when the row is a common new task, the full one otherwise."""
    if (
        row[4] == TaskStatus.NEW.value
        and row[8] == row[9]  # run_after: now
        and all(row[index] is None for index in _PLAIN_NULLS)
    ):
        return _pg_insert_plain_sql(), {key: row[index] for key, index in _PLAIN.items()}
    return _pg_insert_one_sql(), row


def _insert_fields() -> list[Any]:
    return [TaskRecord._meta.get_field(name) for name in _INSERT_COLUMNS]


# What a claim reads back on PostgreSQL: the rest of the snapshot is known already
# (status, worker, times), and every column not read is a value not parsed.
_CLAIM_COLUMNS = (
    "uuid", "task_name", "priority", "queue", "args", "kwargs", "traceback", "errors",
    "attempt", "max_retries", "run_after", "created_at", "unique_key", "cancel_requested",
    "progress", "tags", "flow_id", "flow_stage", "flow_index", "concurrency_key",
    "max_concurrency",
)  # fmt: skip
_CLAIM_JSON = tuple(
    name for name in _CLAIM_COLUMNS if name in {"args", "kwargs", "errors", "progress", "tags"}
)
# Most rows hold empty lists and objects: no need to run the decoder for those.
_EMPTY_JSON: dict[str, Callable[[], Any]] = {"[]": list, "{}": dict}


class BadRow(ValueError):
    """A claimed row that cannot become a task snapshot (JSON nested too deep to decode,
    arguments of the wrong shape): written past enqueue's checks, by hand or another
    program. ``task`` is its snapshot with empty JSON columns, to fail it by."""

    def __init__(self, message: str, task: Task) -> None:
        super().__init__(message)
        self.task = task


# The JSON columns of a snapshot as a bad row's stand-in has them.
_BLANK_JSON: dict[str, Any] = {"args": "[]", "kwargs": "{}", "errors": "[]", "progress": None,
                               "tags": "[]"}  # fmt: skip


def _snapshot_from_pg_row(row: Sequence[Any], known: dict[str, Any]) -> Task:
    """The snapshot of one claimed row; :class:`BadRow` if its JSON cannot be decoded
    or its arguments are not a list and an object, so that it fails alone."""
    values = dict(zip(_CLAIM_COLUMNS, row, strict=True))
    try:
        for name in _CLAIM_JSON:
            value = values[name]
            if isinstance(value, str):  # Django's psycopg setup leaves jsonb as text
                empty = _EMPTY_JSON.get(value)
                values[name] = empty() if empty else json.loads(value)
                if len(value) > MAX_DEPTH and value.count("[") + value.count("{") > MAX_DEPTH:
                    check_value(name, values[name])  # deeper than enqueue allows
        if not isinstance(values["args"], list) or not isinstance(values["kwargs"], dict):
            raise TypeError("its args must be a JSON array and its kwargs a JSON object")
    except (RecursionError, ValueError, TypeError, InvalidTaskCall) as exc:
        if isinstance(exc, RecursionError):
            exc = RecursionError("its JSON nests too deep to decode")
        blank = [
            _BLANK_JSON.get(name, value) for name, value in zip(_CLAIM_COLUMNS, row, strict=True)
        ]
        raise BadRow(
            f"The task's row cannot be run: {exc}. It was not written by add_task(), "
            "which refuses such values (docs/tasks.md#limits).",
            _snapshot_from_pg_row(blank, known),
        ) from None
    values.update(known)
    return Task.from_fields(values)


def _as_uuid(value: Any) -> uuid_lib.UUID:
    return value if isinstance(value, uuid_lib.UUID) else uuid_lib.UUID(str(value))
