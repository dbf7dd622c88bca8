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
from typing import Any, cast

from django.db import connections, models

from django_qtasks.exceptions import InvalidTaskCall
from django_qtasks.models import (
    TaskRecord,
    TaskStatus,
    uuid7s,
)
from django_qtasks.settings import MAX_COUNT
from django_qtasks.storage.arguments import MAX_DEPTH, check_json
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
                "rescues": 0,
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


# The common new task (no unique_key, concurrency limit or flow, due now) has statements
# of its own with 4 parameters instead of 18: what is the same for every call of one
# task (its name, queue, priority, retries and tags) is written into the statement's
# text, one text per such combination (a few dozen in a project, each prepared once by
# psycopg), the NULLs and its status are literals, and one timestamp fills run_after,
# created_at and updated_at. Each bound parameter costs psycopg a dump and the server
# an input conversion, every call: measured, 4 parameters instead of 9 took the single
# add_task() from 92% to 98% of the same INSERT by psycopg alone.
_PLAIN_PARAMS = {"uuid": 0, "args": 5, "kwargs": 6, "now": 9}  # position in a row
_PLAIN_CONSTANT = (1, 2, 3, 7, 12)  # task_name, queue, priority, max_retries, tags
_PLAIN_VALUES = {
    "uuid": "%(uuid)s::uuid", "task_name": "{}::text", "queue": "{}::text",
    "priority": "{}::smallint", "status": f"'{TaskStatus.NEW.value}'",
    "args": "%(args)s::jsonb", "kwargs": "%(kwargs)s::jsonb", "max_retries": "{}::integer",
    "run_after": "%(now)s::timestamptz", "created_at": "%(now)s::timestamptz",
    "updated_at": "%(now)s::timestamptz", "unique_key": "NULL", "tags": "{}::jsonb",
    "concurrency_key": "NULL", "max_concurrency": "NULL", "flow_id": "NULL",
    "flow_stage": "NULL", "flow_index": "NULL",
}  # fmt: skip  ({}: the task's own constant, as a literal)
# Row positions (in _INSERT_COLUMNS order) that must be NULL for the plain statement.
_PLAIN_NULLS = tuple(
    index for index, name in enumerate(_INSERT_COLUMNS) if _PLAIN_VALUES[name] == "NULL"
)


@functools.lru_cache(maxsize=128)
def _pg_insert_plain_sql(task_name: str, queue: str, priority: int, retries: int, tags: str) -> str:
    """The plain INSERT of one task's constants. They are literals quoted by doubling
    ``'`` (and ``%``, which psycopg reads as a placeholder), which is exact whatever
    ``standard_conforming_strings`` says as long as the text holds no backslash;
    :func:`pg_insert_one` sends the others with parameters."""
    names = ", ".join(f'"{c}"' for c in (*_INSERT_COLUMNS, *_INSERT_CONSTANTS))
    texts = (_sql_literal(task_name), _sql_literal(queue), _sql_literal(tags))
    name_sql, queue_sql, tags_sql = (text.replace("%", "%%") for text in texts)  # not a %(...)s
    literals = iter((name_sql, queue_sql, str(int(priority)), str(int(retries)), tags_sql))
    values = [
        _PLAIN_VALUES[name].format(next(literals)) if "{}" in _PLAIN_VALUES[name] else
        _PLAIN_VALUES[name]
        for name in _INSERT_COLUMNS
    ]  # fmt: skip
    values += [_sql_literal(value) for value in _INSERT_CONSTANTS.values()]
    table = TaskRecord._meta.db_table
    return f'INSERT INTO "{table}" ({names}) VALUES ({", ".join(values)})'


def pg_insert_one(row: tuple[Any, ...]) -> tuple[str, Any]:
    """The one-row INSERT of ``row`` on PostgreSQL and its parameters: the plain
    statement of its task when the row is a common new task, the full one otherwise."""
    if (
        row[4] == TaskStatus.NEW.value
        and row[8] == row[9]  # run_after: now
        and all(row[index] is None for index in _PLAIN_NULLS)
        and "\\" not in row[1] + row[2] + row[12]
    ):
        sql = _pg_insert_plain_sql(*(row[index] for index in _PLAIN_CONSTANT))
        return sql, {key: row[index] for key, index in _PLAIN_PARAMS.items()}
    return _pg_insert_one_sql(), row


def _insert_fields() -> list[Any]:
    return [TaskRecord._meta.get_field(name) for name in _INSERT_COLUMNS]


# What a claim reads back: the rest of the snapshot is known already (status, worker,
# times), and every column not read is a value not parsed.
_CLAIM_COLUMNS = (
    "uuid", "task_name", "priority", "queue", "args", "kwargs", "traceback", "errors",
    "attempt", "max_retries", "rescues", "run_after", "created_at", "unique_key",
    "cancel_requested", "progress", "tags", "flow_id", "flow_stage", "flow_index",
    "concurrency_key", "max_concurrency",
)  # fmt: skip
_CLAIM_JSON = tuple(
    name for name in _CLAIM_COLUMNS if name in {"args", "kwargs", "errors", "progress", "tags"}
)
# Most rows hold empty lists and objects: no need to run the decoder for those.
_EMPTY_JSON: dict[str, Callable[[], Any]] = {"[]": list, "{}": dict}
# The deepest the args array and the kwargs object may nest: an argument may nest
# MAX_DEPTH levels and sits one level down.
_ARGUMENTS_DEPTH = MAX_DEPTH + 1
# The claim adds one to a row's attempt, but not past this (PostgreSQL's integer, the
# smallest of the databases' attempt columns): such a row fails alone (BadRow) instead
# of making the whole claim statement fail with an overflow.
MAX_ATTEMPT = 2**31 - 1


class BadRow(ValueError):
    """A claimed row that cannot become a task snapshot (JSON nested too deep to decode,
    arguments of the wrong shape, a column another program filled with what the model
    cannot read): written past enqueue's checks, by hand or another program. ``task``
    is its snapshot with empty JSON columns, to fail it by."""

    def __init__(self, message: str, task: Task) -> None:
        super().__init__(message)
        self.task = task


# The JSON columns of a snapshot as a bad row's stand-in has them.
_BLANK_JSON: dict[str, Any] = {"args": [], "kwargs": {}, "errors": [], "progress": None, "tags": []}
# A stand-in for a column that cannot be read, given the values the claim knows.
_BLANK_VALUE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "run_after": operator.itemgetter("started_at"),
    "created_at": operator.itemgetter("started_at"),
    "cancel_requested": lambda known: False,
}
Converter = Callable[[Any], Any]


_CONTAINERS = (list, dict)  # what json.loads makes of arrays and objects (exact types)


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether decoded JSON nests lists and objects more than ``limit`` deep. Only the
    depth: the claim's values were stored, so their strings are fine (check_value also
    examines every string, which costs more than the decoding)."""
    level: list[Any] = [value] if type(value) in _CONTAINERS else []
    for _depth in range(limit):  # one level at a time, containers only
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            below += [child for child in children if type(child) in _CONTAINERS]
        if not below:
            return False
        level = below
    return bool(level)


def _decode_json(values: dict[str, Any]) -> str | None:
    """Decode the row's JSON columns in place; what is wrong with them, or None."""
    name = ""
    try:
        for name in _CLAIM_JSON:
            value = values[name]
            if isinstance(value, str):  # JSON text (PostgreSQL's jsonb included)
                empty = _EMPTY_JSON.get(value)
                values[name] = empty() if empty else json.loads(value)
                # Cheap on the text first: nesting past the limit needs that many brackets.
                if (
                    name in ("args", "kwargs")
                    and len(value) > _ARGUMENTS_DEPTH
                    and value.count("[") + value.count("{") > _ARGUMENTS_DEPTH
                    and nests_deeper(values[name], _ARGUMENTS_DEPTH)
                ):
                    return f"its {name} nest lists or dicts more than {MAX_DEPTH} deep"
    except RecursionError:
        return f"its {name} JSON nests too deep to decode"
    except ValueError as exc:  # JSONDecodeError, and what the decoder cannot convert
        return f"its JSON cannot be decoded ({exc})"
    if not isinstance(values["args"], list) or not isinstance(values["kwargs"], dict):
        return "its args must be a JSON array and its kwargs a JSON object"
    return None


# Columns whose values the claim and the worker compute with, and their type: a
# database without strict types (SQLite) keeps whatever another program wrote.
_TYPED = {"priority": int, "attempt": int, "max_retries": int, "task_name": str, "queue": str}
_BLANK_TYPED: dict[str, Any] = {"priority": 0, "attempt": 1, "max_retries": 0, "task_name": "",
                                "queue": ""}  # fmt: skip


def _check_columns(values: dict[str, Any]) -> str | None:
    """What is wrong with the row's typed columns (each bad one blanked in place), or
    None."""
    problem = None
    for name, type_ in _TYPED.items():
        value = values[name]
        if not isinstance(value, type_) or isinstance(value, bool):
            values[name] = _BLANK_TYPED[name]
            kind = "an integer" if type_ is int else "text"
            problem = problem or f"its {name} ({value!r:.80}) is not {kind}"
    if problem is None and not 0 <= values["attempt"] < MAX_ATTEMPT:
        problem = f"its attempt ({values['attempt']}) is at the limit of its column"
    if problem is None and not 0 <= values["max_retries"] <= MAX_COUNT:
        # More than a task may be defined with: nothing the queue wrote, and a row that
        # could keep a worker retrying it for good.
        problem = f"its max_retries ({values['max_retries']}) is more than {MAX_COUNT:,}"
    return problem


def _snapshot_from_row(
    row: Sequence[Any], known: dict[str, Any], converters: Sequence[tuple[int, Converter]] = ()
) -> Task:
    """The snapshot of one claimed row (its values in _CLAIM_COLUMNS order, JSON columns
    as text or decoded); :class:`BadRow` if it cannot become one, so that it fails alone.

    ``converters`` turn a database's raw values into Python ones, by column position
    (none on PostgreSQL, whose driver does it). One that raises makes the row bad; its
    stand-in keeps the values that could be read."""
    values = dict(zip(_CLAIM_COLUMNS, row, strict=True))
    problem = None
    for index, convert in converters:
        name = _CLAIM_COLUMNS[index]
        try:
            values[name] = convert(row[index])
        except Exception as exc:  # any value another program wrote
            problem = problem or f"its {name} ({row[index]!r:.80}) cannot be read: {exc}"
            values[name] = _BLANK_VALUE[name](known) if name in _BLANK_VALUE else None
    column_problem = _check_columns(values)  # always: the stand-in is sorted and logged
    problem = problem or column_problem or _decode_json(values)
    values.update(known)
    if problem is not None:
        values.update(_BLANK_JSON)
        raise BadRow(
            f"The task's row cannot be run: {problem}. It was not written by add_task(), "
            "which refuses such values (docs/tasks.md#limits).",
            Task.from_fields(values),
        )
    return Task.from_fields(values)


@functools.cache
def claim_converters(alias: str) -> tuple[tuple[int, Converter], ...]:
    """What turns the claim's raw values into Python ones on this database (not
    PostgreSQL's): Django's converters of each column that has any (UUIDs, times and
    booleans on SQLite and MariaDB), the JSON columns left to the claim's own decoder."""
    connection = connections[alias]
    converters: list[tuple[int, Converter]] = []
    for index, name in enumerate(_CLAIM_COLUMNS):
        if name in _CLAIM_JSON:
            continue
        field = cast("models.Field[Any, Any]", TaskRecord._meta.get_field(name))
        col = field.get_col(TaskRecord._meta.db_table)
        found = connection.ops.get_db_converters(col) + field.get_db_converters(connection)
        if found:
            converters.append((index, functools.partial(_convert, found, col, connection)))
    return tuple(converters)


def _convert(found: list[Any], col: Any, connection: Any, value: Any) -> Any:
    for converter in found:
        value = converter(value, col, connection)
    return value


def _as_uuid(value: Any) -> uuid_lib.UUID:
    return value if isinstance(value, uuid_lib.UUID) else uuid_lib.UUID(str(value))
