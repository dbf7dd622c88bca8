"""The claim path on a real database: order, filters, SKIP LOCKED, the index, races.

Every claim here goes through ``app.broker.storage.claim()``, the same
call the worker makes; nothing in the DB layer is mocked.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
import uuid as uuid_lib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_qtasks import app
from django_qtasks.api.task import Outcome, Task
from django_qtasks.models import TaskRecord, TaskStatus
from django_qtasks.storage.claim import CLAIM_ASYNC_COMMIT, CLAIM_PLANNER_SETTINGS
from django_qtasks.storage.mysql import CLAIM_INDEX
from tests.helpers import analyze, in_threads

pytestmark = pytest.mark.django_db

postgres = pytest.mark.postgres
mysql = pytest.mark.mysql


# -- helpers ------------------------------------------------------------------------------
def enqueue(key: str, **options: Any) -> uuid_lib.UUID:
    """Add one ``tests.record`` task and return its uuid."""
    return app.add_task("tests.record", key, **options).uuid


def claim(limit: int, queues: list[str] | None = None, worker_id: str = "w-test") -> list[Task]:
    return app.broker.storage.claim(worker_id, queues, limit)


def keys(tasks: list[Task]) -> list[str]:
    return [t.args[0] for t in tasks]


def status_of(uuid: uuid_lib.UUID) -> str:
    return TaskRecord.objects.get(uuid=uuid).status


def waiting_records(count: int, key_prefix: str = "k") -> list[TaskRecord]:
    now = timezone.now()
    return [
        TaskRecord(task_name="tests.record", args=[f"{key_prefix}{n}"], run_after=now,
                   created_at=now, updated_at=now)
        for n in range(count)
    ]


SETTINGS_SENT_ALONG = re.compile(r"^(SET LOCAL [a-z_]+ = [a-z]+; )+")


def captured_claim_statement(limit: int) -> tuple[str, list[Any]]:
    """Run one real claim and return the statement Storage executed, with its parameters.

    The SQL is taken from the wire (an execute wrapper), not rebuilt here, so the plan
    checked below is the plan of the library's own statement.
    """
    seen: list[tuple[str, list[Any]]] = []

    def spy(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        claim_sql = SETTINGS_SENT_ALONG.sub("", sql)  # in autocommit
        statement = claim_sql.lstrip().upper()
        if (statement.startswith(("UPDATE", "WITH")) and "RETURNING" in statement) or (
            statement.startswith("SELECT") and "SKIP LOCKED" in statement  # MariaDB/MySQL
        ):
            seen.append((claim_sql, list(params)))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        claimed = claim(limit, worker_id="w-explain")
    assert claimed, "the claim should have found the waiting rows"
    assert len(seen) == 1, f"expected one claim statement (UPDATE ... RETURNING), saw {seen}"
    return seen[0]


def explain(sql: str, params: list[Any]) -> str:
    prefix = "EXPLAIN QUERY PLAN " if connection.vendor == "sqlite" else "EXPLAIN "
    with connection.cursor() as cursor:
        cursor.execute(prefix + sql, params)
        return "\n".join(" ".join(str(col) for col in row) for row in cursor.fetchall())


# -- order and filters --------------------------------------------------------------------
def test_claim_takes_higher_priority_first_across_queues_then_run_after() -> None:
    now = timezone.now()
    enqueue("low-a", queue="a", priority=-5)
    enqueue("mid-b-late", queue="b", priority=3, run_after=now - dt.timedelta(seconds=1))
    enqueue("top-b", queue="b", priority=50)
    enqueue("mid-a-early", queue="a", priority=3, run_after=now - dt.timedelta(seconds=9))
    enqueue("zero-a", queue="a")
    tie = now - dt.timedelta(seconds=5)
    enqueue("tie-1", queue="b", priority=3, run_after=tie)
    enqueue("tie-2", queue="a", priority=3, run_after=tie)

    one_by_one = [keys(claim(1)) for _ in range(8)]

    assert one_by_one == [
        ["top-b"],
        ["mid-a-early"],  # same priority: older run_after first, though created later
        ["tie-1"],  # same priority and run_after: created first
        ["tie-2"],
        ["mid-b-late"],
        ["zero-a"],
        ["low-a"],
        [],
    ]


def test_a_batch_comes_back_in_claim_order_and_respects_the_limit() -> None:
    for priority in (0, 7, -2, 7, 100):
        enqueue(f"p{priority}", priority=priority)

    batch = claim(4)

    assert [t.priority for t in batch] == [100, 7, 7, 0]
    assert TaskRecord.objects.filter(status=TaskStatus.NEW).get().priority == -2


def test_a_future_run_after_is_not_claimed_until_it_passes() -> None:
    later = enqueue("later", run_after=dt.timedelta(minutes=5))
    now_uuid = enqueue("now", priority=-100)

    assert [t.uuid for t in claim(10)] == [now_uuid]
    assert status_of(later) == TaskStatus.NEW

    TaskRecord.objects.filter(uuid=later).update(run_after=timezone.now())
    assert [t.uuid for t in claim(10)] == [later]


def test_the_queues_filter_is_honoured() -> None:
    for queue in ("a", "b", "c", "a", "b"):
        enqueue(f"{queue}-task", queue=queue, priority=10 if queue == "c" else 0)

    only_a = claim(10, queues=["a"])
    assert [t.queue for t in only_a] == ["a", "a"]

    b_or_c = claim(10, queues=["b", "c"])
    assert [t.queue for t in b_or_c] == ["c", "b", "b"]

    assert claim(10, queues=["a", "b", "c"]) == []
    assert not TaskRecord.objects.filter(status=TaskStatus.NEW).exists()


def test_a_claim_marks_rows_process_for_this_worker() -> None:
    fresh = enqueue("fresh")
    again = enqueue("again")
    TaskRecord.objects.filter(uuid=again).update(status=TaskStatus.RETRY, attempt=2)
    untouched = enqueue("untouched", priority=-1)
    before = timezone.now()

    claimed = {t.uuid: t for t in claim(2, worker_id="host:123:abc")}

    after = timezone.now()
    assert set(claimed) == {fresh, again}
    for uuid, attempt in ((fresh, 1), (again, 3)):
        row = TaskRecord.objects.get(uuid=uuid)
        assert row.status == TaskStatus.PROCESS
        assert row.worker_id == "host:123:abc"
        assert row.attempt == attempt
        assert row.started_at is not None
        assert before <= row.started_at <= after
        assert row.updated_at == row.started_at
        snapshot = claimed[uuid]
        assert (snapshot.status, snapshot.worker_id, snapshot.attempt, snapshot.started_at) == (
            row.status, row.worker_id, row.attempt, row.started_at
        )
    row = TaskRecord.objects.get(uuid=untouched)
    assert (row.status, row.worker_id, row.attempt, row.started_at) == ("new", "", 0, None)


def test_a_claimed_snapshot_is_the_row_as_stored() -> None:
    """The claim builds snapshots from plain rows (no model instances): every field must
    match what ``get()`` reads back, for empty and non-empty JSON values alike."""
    plain = enqueue("plain")
    full = enqueue("full", unique_key="u1")
    TaskRecord.objects.filter(uuid=full).update(
        status=TaskStatus.RETRY, kwargs={"k": [1, {"x": None}]}, tags=["a", "b"],
        progress={"done": 1}, errors=[{"type": "E"}], traceback="tb", max_retries=3,
    )  # fmt: skip

    claimed = {t.uuid: t for t in claim(2)}

    assert set(claimed) == {plain, full}
    for uuid in (plain, full):
        assert claimed[uuid] == app.get(uuid)
    assert (claimed[full].errors, claimed[full].progress) == ([{"type": "E"}], {"done": 1})


def test_rows_that_are_not_waiting_are_never_claimed() -> None:
    for status in (TaskStatus.PROCESS, TaskStatus.SUCCESS, TaskStatus.ERROR, TaskStatus.CANCEL):
        uuid = enqueue(f"is-{status}")
        TaskRecord.objects.filter(uuid=uuid).update(status=status)

    assert claim(10) == []


# -- SKIP LOCKED ----------------------------------------------------------------------------
@pytest.fixture
def lock_timeout() -> Iterator[None]:
    """Make our connection fail after 3 s instead of hanging if a claim ever waits on a lock."""
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '3s'")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")


@postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("lock_timeout")
def test_claim_skips_rows_another_connection_has_locked() -> None:
    # The three best rows (highest priority) are the ones the other connection locks.
    locked = [enqueue(f"locked-{n}", priority=50) for n in range(3)]
    free = [enqueue(f"free-{n}") for n in range(4)]

    other = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        other.set_autocommit(False)
        with other.cursor() as cursor:
            cursor.execute(
                f"SELECT uuid FROM {TaskRecord._meta.db_table} WHERE uuid IN (%s, %s, %s) "
                "FOR UPDATE",
                locked,
            )
            assert len(cursor.fetchall()) == 3

        claimed = claim(10)

        assert sorted(t.uuid for t in claimed) == sorted(free)
        assert [status_of(u) for u in locked] == ["new"] * 3
        other.rollback()
    finally:
        other.close()

    assert sorted(t.uuid for t in claim(10)) == sorted(locked)


@postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("lock_timeout")
def test_claim_skips_rows_claimed_in_another_uncommitted_claim() -> None:
    """Another worker's claim that has not committed yet holds its rows: we take the rest."""
    uuids = [enqueue(f"t{n}", priority=n) for n in range(6)]
    holding = threading.Event()
    release = threading.Event()
    held: list[Task] = []
    errors: list[BaseException] = []

    def other_worker() -> None:
        try:
            with transaction.atomic():
                held.extend(claim(2, worker_id="w-other"))
                holding.set()
                if not release.wait(timeout=30):
                    raise AssertionError("the test never released the other claim")
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)
            holding.set()
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_worker)
    thread.start()
    try:
        assert holding.wait(timeout=30)
        assert not errors
        assert [t.uuid for t in held] == [uuids[5], uuids[4]]

        mine = claim(10, worker_id="w-mine")
    finally:
        release.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert not errors

    assert [t.uuid for t in mine] == [uuids[3], uuids[2], uuids[1], uuids[0]]
    owners = dict(TaskRecord.objects.values_list("uuid", "worker_id"))
    assert owners == {**{u: "w-mine" for u in uuids[:4]}, **{u: "w-other" for u in uuids[4:]}}


# -- the index ----------------------------------------------------------------------------
def test_the_claim_statement_uses_the_partial_claim_index() -> None:
    finished = waiting_records(20_000, key_prefix="done")
    for record in finished:
        record.status = TaskStatus.SUCCESS
    TaskRecord.objects.bulk_create(finished, batch_size=2_000)
    TaskRecord.objects.bulk_create(waiting_records(5, key_prefix="wait"))
    analyze(TaskRecord._meta.db_table)

    sql, params = captured_claim_statement(limit=2)
    plan = explain(sql, params)

    if connection.vendor == "mysql":
        # The generated column's index, read in claim order: no sort of what it found.
        assert CLAIM_INDEX in plan, plan
        assert "filesort" not in plan, plan
        return
    assert "qtasks_claim_idx" in plan, plan
    if connection.vendor == "postgresql":
        # Neither the subquery nor the UPDATE reads the 20k finished rows.
        assert "Seq Scan" not in plan, plan
    else:
        assert "TEMP B-TREE" not in plan, plan


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an ``EXPLAIN (FORMAT JSON)`` plan, depth first."""
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


@postgres
def test_the_claim_stays_on_the_partial_index_over_200000_finished_rows() -> None:
    """A long-lived queue table is mostly finished rows (until pruned); the claim must
    read only the waiting ones. The table is loaded in SQL (every column copied from
    one finished row) and ANALYZEd by hand: autovacuum may be off on the test server."""
    template = waiting_records(1, key_prefix="done")[0]
    template.status = TaskStatus.SUCCESS
    template.finished_at = timezone.now()
    template.save()
    table = TaskRecord._meta.db_table
    columns = [field.column for field in TaskRecord._meta.concrete_fields]
    copied = ["gen_random_uuid()" if name == "uuid" else f't."{name}"' for name in columns]
    quoted = ", ".join(f'"{name}"' for name in columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f'INSERT INTO "{table}" ({quoted}) SELECT {", ".join(copied)} '
            f'FROM "{table}" t, generate_series(1, 200000) WHERE t.uuid = %s',
            [template.uuid],
        )
    TaskRecord.objects.bulk_create(waiting_records(5, key_prefix="wait"))
    with connection.cursor() as cursor:
        cursor.execute(f'ANALYZE "{table}"')
    assert TaskRecord.objects.filter(status=TaskStatus.SUCCESS).count() == 200_001

    sql, params = captured_claim_statement(limit=2)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        (document,) = cursor.fetchone()
    plan = json.loads(document) if isinstance(document, str) else document
    nodes = list(plan_nodes(plan[0]["Plan"]))

    indexes = {node.get("Index Name") for node in nodes}
    assert "qtasks_claim_idx" in indexes, json.dumps(plan, indent=1)
    scans = [n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == table]
    assert scans == [], json.dumps(plan, indent=1)
    # The planner expects to read the few waiting rows, not the finished ones.
    on_index = [n for n in nodes if n.get("Index Name") == "qtasks_claim_idx"]
    assert max(n["Plan Rows"] for n in on_index) < 1000, json.dumps(plan, indent=1)


def mysql_plan(sql: str, params: list[Any], *, run: bool = False) -> list[dict[str, Any]]:
    """The table accesses of a statement's plan on MariaDB (``EXPLAIN FORMAT=JSON``, or
    with ``run`` its ``ANALYZE FORMAT=JSON``, which runs it and counts the rows each
    access really read), depth first."""
    with connection.cursor() as cursor:
        cursor.execute(("ANALYZE" if run else "EXPLAIN") + " FORMAT=JSON " + sql, params)
        document = json.loads(cursor.fetchone()[0])
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "table_name" in node:
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return found


FINISHED_ROWS = int(os.environ.get("QTASKS_TEST_FINISHED_ROWS", "200000"))


@mysql
def test_the_mariadb_claim_reads_a_batch_not_the_finished_history() -> None:
    """MariaDB has no partial index: the claim's index is on a generated column that is
    NULL for every finished row (migration 0008). Over many finished rows (200,000 here;
    QTASKS_TEST_FINISHED_ROWS=1000000 for the docs' figure) the claim reads that index
    in claim order and stops after the batch: ANALYZE runs the claim's own SELECT and
    counts the rows it really read."""
    template = waiting_records(1, key_prefix="done")[0]
    template.status = TaskStatus.SUCCESS
    template.finished_at = timezone.now()
    template.save()
    table = connection.ops.quote_name(TaskRecord._meta.db_table)
    columns = [field.column for field in TaskRecord._meta.concrete_fields]
    # MariaDB's uuid type takes UUID()'s text; MySQL stores a UUIDField as char(32).
    new_uuid = "UUID()" if connection.mysql_is_mariadb else "REPLACE(UUID(), '-', '')"
    copied = [new_uuid if name == "uuid" else connection.ops.quote_name(name) for name in columns]
    quoted = ", ".join(connection.ops.quote_name(name) for name in columns)
    count = 1
    with connection.cursor() as cursor:
        while count < FINISHED_ROWS + 1:  # doubling the finished rows, in SQL
            step = min(count, FINISHED_ROWS + 1 - count)
            cursor.execute(
                f"INSERT INTO {table} ({quoted}) SELECT {', '.join(copied)} FROM {table} "
                "WHERE status = 'success' LIMIT %s",
                [step],
            )
            count += step
    TaskRecord.objects.bulk_create(waiting_records(50, key_prefix="wait"))
    analyze(TaskRecord._meta.db_table)
    assert TaskRecord.objects.filter(status=TaskStatus.SUCCESS).count() == FINISHED_ROWS + 1

    sql, params = captured_claim_statement(limit=10)
    planned = [n for n in mysql_plan(sql, params) if n["table_name"] == TaskRecord._meta.db_table]
    assert [n.get("key") for n in planned] == [CLAIM_INDEX], planned
    ran = [
        n for n in mysql_plan(sql, params, run=True) if n["table_name"] == TaskRecord._meta.db_table
    ]
    # The 40 waiting rows left and a batch of 10: never the finished ones.
    assert ran[0]["r_rows"] <= 50, ran


# -- races --------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_two_threads_claiming_at_once_never_share_a_task_and_take_them_all() -> None:
    TaskRecord.objects.bulk_create(waiting_records(500))
    all_uuids = set(TaskRecord.objects.values_list("uuid", flat=True))
    start = threading.Barrier(2, timeout=30)
    got: dict[str, list[uuid_lib.UUID]] = {"w-1": [], "w-2": []}
    batch_sizes: list[int] = []

    def worker(worker_id: str) -> None:
        start.wait()
        while batch := claim(5, worker_id=worker_id):
            batch_sizes.append(len(batch))
            got[worker_id].extend(t.uuid for t in batch)

    in_threads(worker, [(wid,) for wid in got], on_error=start.abort)

    everything = got["w-1"] + got["w-2"]
    assert len(everything) == len(set(everything)), "a task was claimed twice"
    assert set(everything) == all_uuids
    assert max(batch_sizes) <= 5
    if connection.vendor == "postgresql":
        # Row locks make this fair. SQLite's busy handler is not fair (a waiting writer
        # sleeps and retries), so there one thread may legitimately take everything.
        assert got["w-1"], "both threads should have claimed some tasks"
        assert got["w-2"], "both threads should have claimed some tasks"
    owners = dict(TaskRecord.objects.values_list("uuid", "worker_id"))
    assert all(owners[u] == wid for wid, uuids in got.items() for u in uuids)
    assert set(TaskRecord.objects.values_list("status", "attempt")) == {("process", 1)}


@pytest.mark.django_db(transaction=True)
def test_a_claim_never_takes_more_than_its_limit() -> None:
    """The batch is picked once (a MATERIALIZED CTE): a plan that ran a LIMIT ... SKIP
    LOCKED subquery again could lock and claim other rows on top."""
    TaskRecord.objects.bulk_create(waiting_records(300))
    analyze(TaskRecord._meta.db_table)
    sizes = []
    while batch := claim(7, worker_id="w-limit"):
        sizes.append(len(batch))
    assert sum(sizes) == 300
    assert max(sizes) <= 7


# -- statements per batch -----------------------------------------------------------------
def test_claiming_and_finishing_a_batch_of_100_costs_one_statement_each() -> None:
    """The worker's hot path stays batched: one statement claims 100 tasks and one
    stores their 100 outcomes (on SQLite the outcomes share one transaction, here a
    savepoint inside the test's own). A per-row statement or an extra read back would
    show up here as a bigger count."""
    app.add_tasks([("tests.record", (f"k{n}",), {}) for n in range(100)])
    with CaptureQueriesContext(connection) as claims:
        tasks = claim(100)
    assert len(tasks) == 100
    claim_statements = [q["sql"].split()[0].upper() for q in claims]
    if connection.vendor == "mysql":
        # No UPDATE ... RETURNING: the batch is locked and read, then marked, by key.
        assert claim_statements == ["SAVEPOINT", "SELECT", "UPDATE", "RELEASE"], claims
    else:
        assert len(claims) == 1, [q["sql"][:80] for q in claims]

    outcomes = [(task, Outcome(status="success", returning=n)) for n, task in enumerate(tasks)]
    with CaptureQueriesContext(connection) as finishes:
        stored = app.broker.storage.finish_many(outcomes)
    assert stored == [True] * 100
    # Django logs SQLite's executemany (one prepared statement) as "100 times: UPDATE".
    statements = [q["sql"].removeprefix("100 times: ").split()[0].upper() for q in finishes]
    if connection.vendor == "postgresql":
        assert statements == ["UPDATE"]
    else:
        assert statements == ["SAVEPOINT", "UPDATE", "RELEASE"]
    assert TaskRecord.objects.filter(status="success").count() == 100


@postgres
@pytest.mark.django_db(transaction=True)
def test_stale_statistics_do_not_turn_the_claim_into_a_sort_of_the_whole_queue() -> None:
    """Statistics taken while the table was empty, then 20,000 waiting rows and no
    ANALYZE (a burst into a new table, before autovacuum comes by): the planner
    expects a handful of waiting rows and, left alone, fetches and sorts them all on
    every claim. The settings the claim carries keep it on the claim index, in order,
    LIMITed. (Earlier tests' column statistics are dropped first: an ANALYZE of an
    empty table keeps them, and they would tell the planner the truth.)"""
    table = TaskRecord._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not cursor.fetchone()[0]:
            pytest.skip("forgetting a table's statistics needs a superuser")
        cursor.execute("DELETE FROM pg_statistic WHERE starelid = %s::regclass", [table])
        cursor.execute(f"ANALYZE {table}")
    TaskRecord.objects.bulk_create(waiting_records(20_000), batch_size=5000)

    wire: list[str] = []

    def spy(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        wire.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        sql, params = captured_claim_statement(32)
    assert any(s.startswith(CLAIM_PLANNER_SETTINGS) and sql in s for s in wire), wire
    assert "Sort" in explain(sql, params), "the statistics should mislead the planner here"
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(CLAIM_PLANNER_SETTINGS)
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "qtasks_claim_idx" in plan
    assert "Sort" not in plan, plan
    assert "Bitmap" not in plan, plan


@postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("durable", [False, True])
def test_a_claim_in_autocommit_skips_the_flush_unless_durable_claims(durable: bool) -> None:
    """The claim's commit does not wait for the WAL flush unless DURABLE_CLAIMS; the
    setting lasts for the claim's own transaction and never reaches the session."""
    TaskRecord.objects.bulk_create(waiting_records(3))
    wire: list[str] = []

    def spy(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        wire.append(sql)
        return execute(sql, params, many, context)

    with override_settings(QTASKS={"DURABLE_CLAIMS": durable}):
        with connection.execute_wrapper(spy):
            assert len(claim(2)) == 2
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == "on"
        claim_sql = [s for s in wire if "RETURNING" in s]
        assert len(claim_sql) == 1
        assert (CLAIM_ASYNC_COMMIT in claim_sql[0]) is not durable
        # Inside the caller's transaction nothing rides along: it would outlive the claim.
        wire.clear()
        with transaction.atomic(), connection.execute_wrapper(spy):
            assert len(claim(1)) == 1
        assert not any("SET LOCAL" in s for s in wire), wire
