"""Storage: every database operation on the task table lives here.

The claim is one statement that selects waiting rows in claim order, locks them
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and marks them ``process`` with the
worker's id: no transaction stays open while a task runs. On SQLite the same
``UPDATE ... RETURNING`` takes the write lock when it starts, so two workers never
claim one task. A claim that returns tasks with a concurrency limit is followed by a
short check that keeps within each group's limit (see ``DjangoStorage._check_limits``).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import operator
import uuid as uuid_lib
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.db.models import F, OuterRef, Subquery
from django.db.models.functions import Greatest
from django.utils import timezone

from django_qtasks.api.task import Outcome, Task, TaskSpec, check_json
from django_qtasks.broker.listener import CHANNEL
from django_qtasks.exceptions import ConfigurationError, InvalidTaskCall, TaskConflict
from django_qtasks.global_config.global_config import BaseGlobalConfig
from django_qtasks.models import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    ConfigEntry,
    ScheduleRun,
    TaskRecord,
    TaskStatus,
    uuid7s,
)
from django_qtasks.settings import QTasksSettings
from django_qtasks.signals import component_started, component_stopped
from django_qtasks.storage.concurrency import LOCK_CLASS, lock_key
from django_qtasks.storage.cursors import kept_cursor, server_bound_cursor, session_state_wanted

logger = logging.getLogger("django_qtasks.storage")

SUPPORTED_VENDORS = ("postgresql", "mysql", "sqlite")


def supported_vendor_list() -> str:
    """The supported databases as a sentence says them."""
    return ", ".join(SUPPORTED_VENDORS[:-1]) + " and " + SUPPORTED_VENDORS[-1]


WORKERS = "workers"  # the GlobalConfig name under which workers keep their heartbeats
QUEUES = "queues"  # ... and under which paused queues are flagged
WORKER_LOST = "django_qtasks.exceptions.WorkerLost"
CANCELLED = "django_qtasks.exceptions.TaskCancelled"
# A message for an error entry: plain text, or an SQL expression and its parameters.
Message = str | tuple[str, list[Any]]


def lost_for_good(why: str, allowance: int) -> str:
    """The message of a task whose run was lost once more than ``MAX_RESCUES`` allows."""
    times = allowance + 1
    return (
        f"Task lost {times} time{'s' if times != 1 else ''}, more than "
        f"QTASKS['MAX_RESCUES'] = {allowance} allows; the last time {why}. "
        "It is not run again."
    )


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
    "uuid": 0, "name": 1, "queue": 2, "priority": 3, "args": 5, "kwargs": 6, "retries": 7,
    "now": 9, "tags": 12,
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


_NOW = object()  # stands for "the time of the statement" in _update_with_error
_CLAIM_ROUNDS = 3  # claims in one claim() call, when limited tasks were handed back
_PREVIOUS = "qtasks_previous_status"  # the claim's extra column: a limited row's old status


@dataclass(frozen=True)
class LastRun:
    """The newest enqueued tick of a schedule."""

    tick: dt.datetime
    task_uuid: uuid_lib.UUID | None
    enqueued_at: dt.datetime


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
        uuids: Collection[uuid_lib.UUID] | None = None,
    ) -> list[Task]:
        """Mark up to ``limit`` ready tasks ``process`` for this worker and return them,
        in claim order (higher priority first, then older ``run_after``). ``queues``
        limits the queues (``None``: all); ``exclude`` names paused ones.

        With ``uuids``, only those tasks are claimed, if they are waiting, whatever their
        ``run_after``: the in-process runner of :mod:`django_qtasks.testing` runs one
        given task, and its retries at once.

        A task with ``max_concurrency`` is returned only if running it keeps its group
        within the limit, counting every worker (docs/concurrency-limits.md): every
        caller runs what this returns, so the limit is enforced here."""

    def next_run_after(
        self, queues: Sequence[str] | None, exclude: Collection[str] = ()
    ) -> dt.datetime | None:
        """When the earliest delayed task of these queues becomes ready (``None``: none
        is waiting), so an idle worker can sleep until then rather than a whole poll."""
        return None

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
        that worker's tasks (but those in ``keep``), whatever its heartbeat; ``crashed``
        says whether the worker died or left (the reason recorded).
        A lost run is the worker's loss, not the task's: it keeps its attempt (the
        user's retries stay whole) and counts one rescue instead. A task already
        rescued ``QTASKS["MAX_RESCUES"]`` times ends ``error``, so a task that keeps
        killing its worker stops.
        """

    @abstractmethod
    def rescue_run(self, task: Task, why: str, *, delay: float = 0.0) -> str | None:
        """Rescue one run of ``task`` that its worker lost while the task itself did
        nothing wrong (the database cut the worker's connection), as :meth:`rescue`
        does, due in ``delay`` seconds; returns the new status (``retry``, or ``error``
        past ``MAX_RESCUES``), or None if the row was no longer this worker's."""

    @abstractmethod
    def release(self, worker_id: str, uuids: Collection[uuid_lib.UUID]) -> int:
        """Put tasks that ``worker_id`` claimed but never started back to waiting, as
        they were before the claim (their attempt unspent, their place in claim order
        kept), for any worker to claim; returns how many. Rows no longer held by that
        worker are left alone."""

    @abstractmethod
    def cancel(self, uuid: uuid_lib.UUID | str, reason: str = "") -> Task | None:
        """Cancel a waiting task at once; ask a running one to stop (``cancel_requested``)."""

    @abstractmethod
    def cancel_requests(self, worker_id: str) -> set[uuid_lib.UUID]:
        """The running tasks of this worker that someone asked to cancel."""

    # -- schedules and retention (not abstract: a Storage without them has no schedules
    # and no pruning; see docs/periodic-tasks.md and docs/retention.md) -----------------
    def add_scheduled(
        self, schedule: str, tick: dt.datetime, spec: TaskSpec, worker_id: str = ""
    ) -> Task | None:
        """Store the task of one tick of a schedule, unless that tick was enqueued before
        (by any worker, at any time): then store nothing and return ``None``. The
        database decides, in one transaction, however many workers try at once."""
        raise NotImplementedError(f"{type(self).__name__} does not support schedules")

    def last_schedule_runs(self, names: Collection[str]) -> dict[str, LastRun]:
        """The newest enqueued tick of each of these schedules that has one."""
        raise NotImplementedError(f"{type(self).__name__} does not support schedules")

    def prune(
        self,
        before: dt.datetime,
        statuses: Collection[str] = FINISHED_STATUSES,
        limit: int = 1000,
    ) -> int:
        """Delete at most ``limit`` finished tasks of ``statuses`` that finished before
        ``before``, in one short statement; return how many. Never a waiting or running
        task. Call it again until it returns less than ``limit``."""
        raise NotImplementedError(f"{type(self).__name__} does not support pruning")

    def count_prunable(
        self, before: dt.datetime, statuses: Collection[str] = FINISHED_STATUSES
    ) -> int:
        """How many tasks :meth:`prune` would delete, all batches together."""
        raise NotImplementedError(f"{type(self).__name__} does not support pruning")

    def prune_schedule_runs(self, before: dt.datetime, limit: int = 1000) -> int:
        """Delete at most ``limit`` schedule runs whose tick is before ``before``, except
        each schedule's newest (its "last run", which decides the catch-up)."""
        raise NotImplementedError(f"{type(self).__name__} does not support pruning")

    # -- flows (not abstract: a Storage without them has no chains and groups; see
    # docs/workflows.md) ------------------------------------------------------------------
    def add_flow(self, specs: Sequence[TaskSpec]) -> list[Task]:
        """Store every task of a chain or group, all or none, as the specs say: their
        ``flow_*`` places, and ``blocked`` for those that wait for an earlier stage.
        ``finish_many`` then releases each stage when the one before it succeeded."""
        raise NotImplementedError(f"{type(self).__name__} does not support flows")


class DjangoStorage(BaseStorage):
    """Storage on the ``TaskRecord`` model.

    On MariaDB or MySQL it is a :class:`~django_qtasks.storage_mysql.MySQLStorage`,
    whose statements differ where those databases lack PostgreSQL's."""

    def __new__(cls, settings: QTasksSettings, global_config: BaseGlobalConfig) -> DjangoStorage:
        if cls is DjangoStorage and connections[settings.database].vendor == "mysql":
            from django_qtasks.storage.mysql import MySQLStorage

            cls = MySQLStorage
        return super().__new__(cls)

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
                # still one statement, atomic.
                columns = ", ".join(ops.quote_name(c) for c in _COPY_COLUMNS)
                with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
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
        uuids: Collection[uuid_lib.UUID] | None = None,
    ) -> list[Task]:
        if limit <= 0 or (uuids is not None and not uuids):
            return []
        claimed: list[Task] = []
        # A batch whose limited rows had to be handed back leaves this worker's threads
        # free: claim again at once (other tasks may be ready), a few rounds at most. The
        # handed-back rows are skipped: the running rows that made them excess are
        # committed, so the claim's hint now sees their group full.
        interleaved = False  # batches of several rounds, each in claim order by itself
        for _round in range(_CLAIM_ROUNDS):
            batch, previous = self._claim_batch(
                worker_id, queues, limit - len(claimed), exclude, uuids
            )
            handed_back = 0
            if previous:  # limited rows in the batch: the common path never gets here
                batch, handed_back = self._check_limits(worker_id, batch, previous)
            interleaved = interleaved or bool(claimed and batch)
            claimed += batch
            if not handed_back or len(claimed) >= limit:
                break
        if interleaved:
            claimed.sort(key=_claim_order)
        return claimed

    def _claim_batch(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        exclude: Collection[str],
        uuids: Collection[uuid_lib.UUID] | None,
    ) -> tuple[list[Task], dict[uuid_lib.UUID, str]]:
        """One claim statement; returns the tasks and, for the limited ones only, the
        status each had before (``new`` or ``retry``), should it have to be handed back."""
        connection = connections[self.alias]
        ops = connection.ops
        table = ops.quote_name(TaskRecord._meta.db_table)
        claimed_at = timezone.now()
        now = ops.adapt_datetimefield_value(claimed_at)
        # The statuses are literals, as in the partial index's condition: SQLite uses a
        # partial index only when the query repeats that condition word for word.
        where, params = self._claim_where(
            f"status IN ('{TaskStatus.NEW.value}', '{TaskStatus.RETRY.value}')",
            queues, exclude, uuids, now,
        )  # fmt: skip
        lock = (
            " FOR UPDATE SKIP LOCKED"
            if connection.features.has_select_for_update_skip_locked
            else ""
        )
        postgres = connection.vendor == "postgresql"
        # What the status was, for limited rows only (NULL for the others). PostgreSQL
        # skips the look-up for unlimited rows. SQLite (3.40) evaluates ``x IS NULL``
        # wrongly in a RETURNING clause, so there the CTE decides and every row looks
        # its ``was`` up (in the CTE's automatic index).
        previous = f"(SELECT p.was FROM picked p WHERE p.uuid = {table}.uuid)"
        returned = (
            ", ".join(ops.quote_name(name) for name in _CLAIM_COLUMNS)
            + f", CASE WHEN {table}.max_concurrency IS NULL THEN NULL ELSE {previous} END"
            if postgres
            else f"*, {previous} AS {_PREVIOUS}"
        )
        # The batch is picked once, in a MATERIALIZED CTE: a plain `uuid IN (SELECT ...
        # LIMIT n SKIP LOCKED)` may be run again by some plans, and each run can lock
        # other rows, claiming more than n.
        sql = (
            f"WITH picked AS MATERIALIZED (SELECT uuid, CASE WHEN max_concurrency IS NULL "
            f"THEN NULL ELSE status END AS was FROM {table} WHERE {where} "
            f"ORDER BY priority DESC, run_after, created_at LIMIT %s{lock}) "
            f"UPDATE {table} SET status = %s, worker_id = %s, attempt = attempt + 1, "
            f"started_at = %s, updated_at = %s "
            f"WHERE uuid IN (SELECT uuid FROM picked) "
            f"RETURNING {returned}"
        )
        all_params = [*params, limit, TaskStatus.PROCESS.value, worker_id, now, now]
        was: dict[uuid_lib.UUID, str] = {}
        if postgres:
            # The hot path: plain rows into snapshots, no model instances. Django's
            # psycopg setup hands jsonb over as text, for JSONField to decode.
            with connection.cursor() as cursor:
                steer = uuids is None and _can_steer(connection, cursor)
                prefix = claim_settings(durable=self.settings.durable_claims) if steer else ""
                cursor.execute(prefix + sql, all_params)
                while steer and cursor.description is None and cursor.nextset():
                    pass  # past the SETs' empty results, to the claimed rows
                known = {
                    "status": TaskStatus.PROCESS.value,
                    "worker_id": worker_id,
                    "started_at": claimed_at,
                    "updated_at": claimed_at,
                    "returning": None,
                    "finished_at": None,
                }
                tasks = []
                for row in cursor.fetchall():
                    tasks.append(_snapshot_from_pg_row(row[:-1], known))
                    if row[-1] is not None:
                        was[tasks[-1].uuid] = row[-1]
        else:
            tasks = []
            for record in self._records().raw(sql, all_params):
                tasks.append(Task.from_record(record))
                if getattr(record, _PREVIOUS) is not None:
                    was[record.uuid] = getattr(record, _PREVIOUS)
        tasks.sort(key=_claim_order)
        return tasks, was

    def _claim_where(
        self,
        waiting: str,
        queues: Sequence[str] | None,
        exclude: Collection[str],
        uuids: Collection[uuid_lib.UUID] | None,
        now: Any,
    ) -> tuple[str, list[Any]]:
        """The claim's WHERE clause and its parameters: ``waiting`` (the condition of the
        database's claim index), ready or one of ``uuids``, the queues, and the
        concurrency hint."""
        connection = connections[self.alias]
        table = connection.ops.quote_name(TaskRecord._meta.db_table)
        where = f"{waiting} AND run_after <= %s"
        params: list[Any] = [now]
        if uuids is not None:
            pk = TaskRecord._meta.pk
            where = f"{waiting} AND uuid IN ({', '.join(['%s'] * len(uuids))})"
            params = [pk.get_db_prep_value(u, connection) for u in uuids]
        if queues:
            where += f" AND queue IN ({', '.join(['%s'] * len(queues))})"
            params.extend(queues)
        if exclude:
            where += f" AND queue NOT IN ({', '.join(['%s'] * len(exclude))})"
            params.extend(exclude)
        # The concurrency hint: a limited row whose group is full now is not taken. Only
        # limited rows pay for the count (through qtasks_limited_running_idx). It can be
        # wrong (two workers count at once, one batch takes several rows of a group):
        # _check_limits decides; the hint only keeps a full group's rows from churning.
        where += (
            " AND CASE WHEN max_concurrency IS NULL THEN TRUE ELSE "
            f"(SELECT COUNT(*) FROM {table} r WHERE r.status = '{TaskStatus.PROCESS.value}' "
            f"AND r.concurrency_key IS NOT NULL AND r.task_name = {table}.task_name "
            f"AND r.concurrency_key = {table}.concurrency_key) < max_concurrency END"
        )
        return where, params

    def _check_limits(
        self, worker_id: str, tasks: list[Task], previous: dict[uuid_lib.UUID, str]
    ) -> tuple[list[Task], int]:
        """Keep the limited tasks of a claim that fit in their groups' limits and hand
        the others back (undoing their claim), in one short transaction; returns the
        tasks to run and how many were handed back.

        Why a limit is never exceeded. A task runs only once a check kept it, and the
        checks of one group never overlap: on PostgreSQL each takes the group's
        transaction-level advisory lock (groups in sorted order, so two checks never
        wait for each other in a cycle), on SQLite the first write takes the database's
        write lock. Under that lock the check counts the group's ``process`` rows in a
        statement that starts after the lock was granted (READ COMMITTED: it sees
        every commit made before it). The claim statement that marked a row ``process``
        committed before that row's check began, and a check commits (handing back
        what it does not keep) before it releases the lock. So every row kept by an
        earlier check that still runs is in the count, with this worker's own claims
        and any other claims not yet checked, which only make the count larger. The
        check keeps at most ``limit - (count - own)`` of its own rows, so kept and
        running rows of the group are never more than the limit; rows only leave
        ``process`` (finished, rescued, handed back), never join it without a check.
        Where a group's rows carry different limits (the option changed between two
        deployments), the smallest limit among this worker's rows applies. (The one
        exception is delivery's own: a worker cut off from the database past its
        heartbeat's expiry may still run a task that was rescued and claimed again.)
        """
        connection = connections[self.alias]
        ops = connection.ops
        table = ops.quote_name(TaskRecord._meta.db_table)
        mine: dict[tuple[str, str], list[Task]] = {}
        for task in tasks:  # in claim order, so the last of a group has the lowest priority
            if task.uuid in previous:
                mine.setdefault((task.task_name, task.concurrency_key or ""), []).append(task)
        excess: list[Task] = []
        with transaction.atomic(using=self.alias), connection.cursor() as cursor:
            self._lock_limit_groups(cursor, mine, previous)
            matches = " OR ".join(["(task_name = %s AND concurrency_key = %s)"] * len(mine))
            cursor.execute(
                f"SELECT task_name, concurrency_key, COUNT(*) FROM {table} "
                f"WHERE status = '{TaskStatus.PROCESS.value}' AND concurrency_key IS NOT NULL "
                f"AND ({matches}) GROUP BY task_name, concurrency_key",
                [value for group in mine for value in group],
            )
            running = {(name, key): count for name, key, count in cursor.fetchall()}
            for group, rows in mine.items():
                over = running.get(group, 0) - min(t.max_concurrency or 1 for t in rows)
                if over > 0:
                    excess += rows[-over:]
            if excess:
                self._undo_claims(cursor, worker_id, excess, previous)
        if not excess:
            return tasks, 0
        logger.debug(
            "Handed back %d task(s) over their concurrency limit",
            len(excess),
            extra={"action": "concurrency_limited", "count": len(excess)},
        )
        dropped = {task.uuid for task in excess}
        return [task for task in tasks if task.uuid not in dropped], len(excess)

    def _lock_limit_groups(
        self,
        cursor: Any,
        groups: Collection[tuple[str, str]],
        previous: dict[uuid_lib.UUID, str],
    ) -> None:
        """Make the concurrency checks of these groups take turns (see _check_limits):
        on PostgreSQL the groups' transaction-level advisory locks, on SQLite the
        database's write lock, taken by a first write."""
        connection = connections[self.alias]
        if connection.vendor == "postgresql":
            level = getattr(getattr(connection, "isolation_level", None), "name", "")
            if len(connection.atomic_blocks) == 1 and level in ("REPEATABLE_READ", "SERIALIZABLE"):
                # The count must see commits made while this waited for the lock (not
                # inside a caller's transaction, which has begun); SET TRANSACTION
                # lasts for this transaction only (poolers allow it).
                cursor.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            # In array order (a function scan): sorted, so no two checks deadlock.
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, k) FROM unnest(%s::integer[]) AS u(k)",
                [LOCK_CLASS, sorted({lock_key(*group) for group in groups})],
            )
        else:
            first = next(iter(previous))
            cursor.execute(
                f"UPDATE {connection.ops.quote_name(TaskRecord._meta.db_table)} "
                "SET updated_at = updated_at WHERE uuid = %s",
                [TaskRecord._meta.pk.get_db_prep_value(first, connection)],
            )

    def _undo_claims(
        self,
        cursor: Any,
        worker_id: str,
        tasks: list[Task],
        previous: dict[uuid_lib.UUID, str],
    ) -> None:
        """Put claimed tasks back as they were before the claim: their status (``new``
        or ``retry``), their attempt, no worker and no start time."""
        connection = connections[self.alias]
        ops = connection.ops
        table = ops.quote_name(TaskRecord._meta.db_table)
        pk = TaskRecord._meta.pk
        now = ops.adapt_datetimefield_value(timezone.now())
        for status in (TaskStatus.NEW.value, TaskStatus.RETRY.value):
            uuids = [
                pk.get_db_prep_value(t.uuid, connection)
                for t in tasks
                if previous.get(t.uuid, TaskStatus.NEW.value) == status
            ]
            if uuids:
                cursor.execute(
                    f"UPDATE {table} SET status = %s, attempt = attempt - 1, worker_id = '', "
                    f"started_at = NULL, updated_at = %s WHERE uuid IN "
                    f"({', '.join(['%s'] * len(uuids))}) "
                    f"AND status = '{TaskStatus.PROCESS.value}' AND worker_id = %s",
                    [status, now, *uuids, worker_id],
                )

    def next_run_after(
        self, queues: Sequence[str] | None, exclude: Collection[str] = ()
    ) -> dt.datetime | None:
        waiting = self._records().filter(
            status__in=[TaskStatus.NEW, TaskStatus.RETRY], run_after__gt=timezone.now()
        )
        if queues:
            waiting = waiting.filter(queue__in=queues)
        if exclude:
            waiting = waiting.exclude(queue__in=exclude)
        first: dt.datetime | None = (
            waiting.order_by("run_after").values_list("run_after", flat=True).first()
        )
        return first

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
                    {"attempt": task.attempt, "at": now.isoformat(), "worker_id": task.worker_id,
                     **outcome.error,
                     "traceback": outcome.traceback}
                )  # fmt: skip
            success = outcome.status == TaskStatus.SUCCESS
            retry = outcome.status == TaskStatus.RETRY
            rows.append(
                (
                    task.uuid,
                    task.worker_id,
                    str(outcome.status),
                    (outcome.returning_json or json.dumps(outcome.returning))
                    if success and outcome.returning is not None
                    else None,
                    entry,
                    outcome.traceback if entry is not None else None,
                    (outcome.run_after or now) if retry else None,
                    None if retry else now,
                )
            )
        postgres = connection.vendor == "postgresql"
        # One transaction (one commit, one fsync) for the whole batch. On PostgreSQL a
        # batch without chain or group steps is one statement, atomic by itself: no
        # BEGIN and COMMIT round trips.
        atomic = not postgres or any(task.flow_id is not None for task, _ in items)
        with (
            transaction.atomic(using=self.alias) if atomic else nullcontext(),
            server_bound_cursor(connection) if postgres else connection.cursor() as cursor,
        ):
            if postgres:
                stored = self._finish_pg(cursor, rows, now)
            else:
                stored = self._finish_rows(cursor, rows, now)
            # Only a finished task of a chain or group costs more statements.
            flows = [
                (task, outcome)
                for task, outcome in items
                if task.flow_id is not None
                and outcome.status != TaskStatus.RETRY
                and task.uuid in stored
            ]
            if flows:
                self._advance_flows(flows)
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

    def _finish_rows(self, cursor: Any, rows: list[tuple[Any, ...]], now: Any) -> set[Any]:
        """One prepared UPDATE per row, in one transaction (SQLite prepares it once;
        mysqlclient sends them one by one). The error entry is assigned first: MariaDB
        evaluates a SET list left to right, each assignment seeing those before it."""
        connection = connections[self.alias]
        ops = connection.ops
        meta = TaskRecord._meta
        table = ops.quote_name(meta.db_table)
        errors_sql = _errors_plus(connection.vendor, _json_param(connection.vendor))
        db_now = ops.adapt_datetimefield_value(now)
        params = [
            [
                entry, entry, status, ret, tb,
                ops.adapt_datetimefield_value(run_after) if run_after else None,
                ops.adapt_datetimefield_value(finished_at) if finished_at else None,
                db_now, meta.pk.get_db_prep_value(uuid, connection), worker_id,
            ]
            for uuid, worker_id, status, ret, entry, tb, run_after, finished_at in rows
        ]  # fmt: skip
        cursor.executemany(
            f"UPDATE {table} SET errors = CASE WHEN %s IS NULL THEN errors ELSE {errors_sql} END, "
            f"status = %s, {ops.quote_name('returning')} = %s, "
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
        changed = self._rescue_where(where, params, why, delay=delay)
        return changed[0][1] if changed else None

    def _rescue_where(
        self, where: str, where_params: list[Any], why: str, *, delay: float = 0.0
    ) -> list[tuple[uuid_lib.UUID, str]]:
        """Send the rows of ``where`` back to waiting, their attempt unspent and their
        ``rescues`` counted, due in ``delay`` seconds; a row already rescued
        ``MAX_RESCUES`` times ends ``error`` instead (a task that keeps killing its
        worker must stop). One statement: safe to run from many workers at once."""
        connection = connections[self.alias]
        allowance = self.settings.max_rescues
        spent = "rescues >= %s"
        rescued = f"Task lost: {why}. Rescued: back to the queue without spending an attempt."
        final = lost_for_good(why, allowance)
        due = connection.ops.adapt_datetimefield_value(
            timezone.now() + dt.timedelta(seconds=delay)
        )
        message = (f"CASE WHEN {spent} THEN %s ELSE %s END", [allowance, final, rescued])
        # Every expression reads ``rescues`` before its increment (MariaDB evaluates a
        # SET list left to right): the increment comes last.
        assignments: list[tuple[str, Any]] = [
            (f"status = CASE WHEN {spent} THEN %s ELSE %s END",
             [allowance, TaskStatus.ERROR.value, TaskStatus.RETRY.value]),
            (f"finished_at = CASE WHEN {spent} THEN %s ELSE NULL END", [allowance, _NOW]),
            (f"attempt = CASE WHEN {spent} THEN attempt ELSE attempt - 1 END", [allowance]),
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
        for uuid, status in changed:
            if status == TaskStatus.ERROR:
                logger.error(
                    "Task %s lost for good: %s",
                    uuid,
                    final,
                    extra={"action": "lost_for_good", "task_uuid": str(uuid), "status": status},
                )
            else:
                logger.warning(
                    "Task %s rescued: %s; back to the queue without spending an attempt",
                    uuid,
                    why,
                    extra={"action": "rescue", "task_uuid": str(uuid), "status": status},
                )
        return changed

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
                "attempt = attempt - 1, worker_id = '', started_at = NULL, updated_at = %s "
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

    # -- flows (chains and groups) ----------------------------------------------------------
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

    # -- schedules -------------------------------------------------------------------------
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

    # -- retention ---------------------------------------------------------------------------
    def _prune_where(self, before: dt.datetime, statuses: Collection[str]) -> tuple[str, list[Any]]:
        chosen = [str(status) for status in statuses]
        if not chosen or not set(chosen) <= set(FINISHED_STATUSES):
            raise ValueError(
                f"prune deletes finished tasks only ({', '.join(FINISHED_STATUSES)}); "
                f"got {', '.join(chosen) or 'none'}."
            )
        connection = connections[self.alias]
        table = connection.ops.quote_name(TaskRecord._meta.db_table)
        # Through the finished-rows index (finished_at, status): waiting and running rows
        # have no finished_at, so they are neither read nor locked. A finished task of a
        # flow whose later steps still wait stays: their release reads its result.
        where = (
            f"finished_at IS NOT NULL AND finished_at < %s "
            f"AND status IN ({', '.join(['%s'] * len(chosen))}) "
            f"AND (flow_id IS NULL OR NOT EXISTS (SELECT 1 FROM {table} b "
            f"WHERE b.flow_id = {table}.flow_id AND b.status = '{TaskStatus.BLOCKED.value}'))"
        )
        return where, [connection.ops.adapt_datetimefield_value(before), *chosen]

    def prune(
        self,
        before: dt.datetime,
        statuses: Collection[str] = FINISHED_STATUSES,
        limit: int = 1000,
    ) -> int:
        if limit <= 0:
            return 0
        where, params = self._prune_where(before, statuses)
        connection = connections[self.alias]
        table = connection.ops.quote_name(TaskRecord._meta.db_table)
        # Oldest first, in the index's order. SKIP LOCKED: two workers pruning at once
        # take different rows, and neither waits for the other.
        lock = (
            " FOR UPDATE SKIP LOCKED"
            if connection.features.has_select_for_update_skip_locked
            else ""
        )
        deleted = self._delete_batch(
            f"SELECT uuid FROM {table} WHERE {where} ORDER BY finished_at LIMIT %s",
            [*params, limit],
            table,
            "uuid",
            lock,
        )
        if deleted:
            logger.info(
                "Pruned %d finished task(s)", deleted, extra={"action": "prune", "count": deleted}
            )
        return deleted

    def count_prunable(
        self, before: dt.datetime, statuses: Collection[str] = FINISHED_STATUSES
    ) -> int:
        where, params = self._prune_where(before, statuses)
        connection = connections[self.alias]
        table = connection.ops.quote_name(TaskRecord._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", params)
            row = cursor.fetchone()
        return int(row[0])

    def prune_schedule_runs(self, before: dt.datetime, limit: int = 1000) -> int:
        if limit <= 0:
            return 0
        connection = connections[self.alias]
        ops = connection.ops
        table = ops.quote_name(ScheduleRun._meta.db_table)
        schedule, tick = ops.quote_name("schedule"), ops.quote_name("tick")
        return self._delete_batch(
            f"SELECT r.id FROM {table} r WHERE r.{tick} < %s AND EXISTS (SELECT 1 FROM "
            f"{table} n WHERE n.{schedule} = r.{schedule} AND n.{tick} > r.{tick}) "
            f"ORDER BY r.{tick} LIMIT %s",
            [ops.adapt_datetimefield_value(before), limit],
            table,
            "id",
            "",
        )

    def _delete_batch(self, pick: str, params: list[Any], table: str, key: str, lock: str) -> int:
        """Delete the rows whose ``key`` the SELECT ``pick`` (LIMITed) returns, in one
        statement; how many. ``lock`` goes after the SELECT (SKIP LOCKED: two pruners
        take different rows, neither waits for the other).

        A materialized CTE, not ``key IN (SELECT ... LIMIT n)``: PostgreSQL may run such
        a subquery more than once in one statement, and with SKIP LOCKED each run can
        pick other rows, so a "batch" could grow past ``limit``. Counted from RETURNING:
        SQLite's driver has no rowcount for WITH statements."""
        connection = connections[self.alias]
        with transaction.atomic(using=self.alias), connection.cursor() as cursor:
            cursor.execute(
                f"WITH batch AS MATERIALIZED ({pick}{lock}) DELETE FROM {table} "
                f"WHERE {key} IN (SELECT {key} FROM batch) RETURNING {key}",
                params,
            )
            return len(cursor.fetchall())


# Sent before the claim statement, in the same Query message: the implicit transaction
# of a multi-statement query ends with it, so the settings do too. They keep the plan
# that reads qtasks_claim_idx in claim order and stops after a batch, whatever the
# statistics say. Statistics that still describe an empty table, or one of finished
# rows, while thousands of rows wait, make the planner expect a handful of waiting
# rows and prefer to fetch and sort them all: every claim would then read the whole
# queue (20 ms instead of 1 ms at 50,000 waiting rows) until the next ANALYZE.
CLAIM_PLANNER_SETTINGS = "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off; "
# ... and, unless QTASKS["DURABLE_CLAIMS"], the claim's commit does not wait for its WAL
# to reach the disk. A claim only moves rows from `new` to `process`: if the database
# crashes before the WAL writer flushes it (a fraction of a second later), the rows are
# `new` again after recovery and run again, which is what a crashed worker costs anyway
# (at-least-once). The commit that stores the result waits as always, and flushes the
# claim's WAL with it. An idle worker's pickup saves a disk flush, a busy one a flush
# per batch.
CLAIM_ASYNC_COMMIT = "SET LOCAL synchronous_commit = off; "


def claim_settings(*, durable: bool) -> str:
    """What the claim statement carries in autocommit (see above)."""
    return CLAIM_PLANNER_SETTINGS if durable else CLAIM_PLANNER_SETTINGS + CLAIM_ASYNC_COMMIT


def _can_steer(connection: Any, cursor: Any) -> bool:
    """Whether the claim can carry its settings (claim_settings): only in autocommit (inside
    the caller's transaction SET LOCAL would outlive the claim) and with psycopg's
    client-side binding, the only way several statements go in one message."""
    if connection.in_atomic_block:
        return False
    try:
        from psycopg import ClientCursor
    except ImportError:  # psycopg2
        return False
    return isinstance(cursor.cursor, ClientCursor)


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


def _snapshot_from_pg_row(row: Sequence[Any], known: dict[str, Any]) -> Task:
    values = dict(zip(_CLAIM_COLUMNS, row, strict=True))
    for name in _CLAIM_JSON:
        value = values[name]
        if isinstance(value, str):  # Django's psycopg setup leaves jsonb as text
            empty = _EMPTY_JSON.get(value)
            values[name] = empty() if empty else json.loads(value)
    values.update(known)
    return Task.from_fields(values)


def _claim_order(task: Task) -> tuple[Any, ...]:
    """The claim index's order: higher priority first, then older run_after and age."""
    return (-task.priority, task.run_after, task.created_at)


def _as_uuid(value: Any) -> uuid_lib.UUID:
    return value if isinstance(value, uuid_lib.UUID) else uuid_lib.UUID(str(value))
