"""add_task(): what is stored, what is refused, and how it follows the caller's transaction."""

import dataclasses
import datetime as dt

import pytest
from asgiref.sync import async_to_sync
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from django_qtasks import app, async_app
from django_qtasks.api.queue_tasks import QueueTasks
from django_qtasks.api.task import Task
from django_qtasks.exceptions import InvalidTaskCall, WouldDeadlock
from django_qtasks.models import TaskRecord
from django_qtasks.signals import task_enqueued
from tests.helpers import in_threads
from tests.testapp import tasks

pytestmark = pytest.mark.django_db


def test_add_task_stores_a_new_task_and_returns_its_snapshot():
    task = tasks.add.add_task(2, 3, priority=7)
    record = TaskRecord.objects.get(uuid=task.uuid)
    assert (record.status, record.task_name, record.args, record.kwargs) == (
        "new",
        "tests.testapp.tasks.add",
        [2, 3],
        {},
    )
    assert (task.priority, task.queue, task.attempt, task.max_retries) == (7, "default", 0, 0)
    assert app.get(task.uuid) == task


def test_a_snapshot_is_built_only_from_every_field_once():
    fields = vars(tasks.add.add_task(2, 3))
    assert Task.from_fields(dict(fields)) == app.get(fields["uuid"])
    with pytest.raises(TypeError, match="progress"):
        Task.from_fields({k: v for k, v in fields.items() if k != "progress"})
    with pytest.raises(TypeError, match="colour"):
        Task.from_fields({**fields, "colour": "red"})


def test_options_of_the_task_are_the_defaults():
    task = tasks.flaky.add_task("k", 1)
    assert task.max_retries == 3


def test_pending_call_form_passes_reserved_names_to_the_function():
    task = tasks.add(a=1, b=2).add_task(priority=-5, queue="other")
    assert (task.kwargs, task.priority, task.queue) == ({"a": 1, "b": 2}, -5, "other")


def test_add_task_by_name():
    task = app.add_task("tests.record", "x", queue="q1")
    assert (task.task_name, task.args, task.queue) == ("tests.record", ["x"], "q1")


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        ((object(),), {}, "positional argument 0"),
        ((1,), {"when": timezone.now()}, "argument 'when'"),
        (({1, 2},), {}, "positional argument 0"),
        ((float("nan"),), {}, "positional argument 0"),
    ],
)
def test_non_json_arguments_raise_type_error_and_store_nothing(args, kwargs, named):
    with pytest.raises(TypeError, match=named):
        tasks.record.add_task(*args, **kwargs)
    assert TaskRecord.objects.count() == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": 101}, "priority must be from -100 to 100"),
        ({"priority": -101}, "priority must be from -100 to 100"),
        ({"priority": True}, "priority must be an integer"),
        ({"priority": "1"}, "priority must be an integer"),
        ({"queue": ""}, "queue must be"),
        ({"queue": "has space"}, "queue must be"),
        ({"queue": "x" * 65}, "queue must be"),
        ({"run_after": "tomorrow"}, "run_after must be"),
        ({"run_after": dt.datetime(2030, 1, 1)}, "aware datetime"),
        ({"unique_key": ""}, "unique_key must be a non-empty string"),
    ],
)
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(InvalidTaskCall, match=message):
        tasks.record.add_task("x", **options)
    assert TaskRecord.objects.count() == 0


def test_queues_setting_limits_the_queue_names():
    with override_settings(QTASKS={"QUEUES": ["default", "mail"]}):
        tasks.record.add_task("x", queue="mail")
        with pytest.raises(InvalidTaskCall, match="not in QTASKS\\['QUEUES'\\]"):
            tasks.record.add_task("x", queue="mial")


def test_run_after_accepts_datetime_timedelta_and_seconds():
    when = timezone.now() + dt.timedelta(hours=1)
    assert tasks.record.add_task("a", run_after=when).run_after == when
    before = timezone.now()
    by_delta = tasks.record.add_task("b", run_after=dt.timedelta(seconds=30)).run_after
    by_seconds = tasks.record.add_task("c", run_after=30).run_after
    for value in (by_delta, by_seconds):
        assert before + dt.timedelta(seconds=29) < value < timezone.now() + dt.timedelta(seconds=31)


def test_without_run_after_a_task_is_ready_at_once():
    task = tasks.record.add_task("a")
    assert task.run_after == task.created_at


@pytest.mark.django_db(transaction=True)
def test_a_task_added_in_a_rolled_back_block_does_not_exist():
    class Boom(Exception):
        pass

    seen = []

    def enqueue_then_fail():
        with transaction.atomic():
            task = tasks.record.add_task("rolled back")
            seen.append(TaskRecord.objects.filter(uuid=task.uuid).exists())
            raise Boom

    with pytest.raises(Boom):
        enqueue_then_fail()
    assert seen == [True]
    assert not TaskRecord.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_task_added_in_a_committed_block_exists():
    with transaction.atomic():
        task = tasks.record.add_task("committed")
    assert TaskRecord.objects.filter(uuid=task.uuid).exists()


@pytest.mark.django_db(transaction=True)
def test_waiting_inside_atomic_is_refused_before_anything_is_stored():
    with transaction.atomic():
        with pytest.raises(WouldDeadlock):
            tasks.record.add_task("x", timeout=1)
        assert not TaskRecord.objects.exists()
    assert not TaskRecord.objects.exists()


def test_unique_key_returns_the_existing_waiting_task():
    first = tasks.record.add_task("a", unique_key="report:1")
    second = tasks.record.add_task("b", unique_key="report:1")
    assert second.uuid == first.uuid
    assert TaskRecord.objects.count() == 1
    other = tasks.record.add_task("c", unique_key="report:2")
    assert other.uuid != first.uuid


def test_unique_keys_that_differ_only_in_case_are_different_keys():
    """Byte for byte on every database: MariaDB's default collations ignore case and
    accents, its unique index on the key does not (utf8mb4_bin), nor does the look-up
    of the task that holds a key."""
    upper = tasks.record.add_task("a", unique_key="REPORT:X")
    lower = tasks.record.add_task("b", unique_key="report:x")  # the newer one
    assert upper.uuid != lower.uuid
    again = tasks.record.add_task("c", unique_key="REPORT:X")
    assert (again.uuid, again.args) == (upper.uuid, ["a"])


def test_unique_keys_belong_to_one_task_name():
    report = tasks.record.add_task("a", unique_key="daily")
    other = tasks.add.add_task(1, 2, unique_key="daily")
    assert other.uuid != report.uuid
    assert other.task_name == "tests.testapp.tasks.add"


def test_unique_key_is_free_again_once_the_task_finished():
    first = tasks.record.add_task("a", unique_key="k")
    TaskRecord.objects.filter(uuid=first.uuid).update(status="success")
    assert tasks.record.add_task("b", unique_key="k").uuid != first.uuid


def test_task_enqueued_signal_carries_the_snapshot():
    seen = []

    def receiver(sender, task, **kwargs):
        seen.append((sender, task))

    task_enqueued.connect(receiver)
    try:
        task = tasks.add.add_task(1, 1)
    finally:
        task_enqueued.disconnect(receiver)
    assert seen == [(QueueTasks, task)]
    # A duplicate of a unique task is not a new task: no signal.
    task_enqueued.connect(receiver)
    try:
        first = tasks.add.add_task(1, 2, unique_key="once")
        tasks.add.add_task(1, 2, unique_key="once")
    finally:
        task_enqueued.disconnect(receiver)
    assert seen[1:] == [(QueueTasks, first)]


@pytest.mark.django_db(transaction=True)
def test_async_twins_enqueue_and_read():
    async def scenario():
        task = await tasks.async_app_add.add_task(1, 2)
        assert await async_app.get(task.uuid) == task
        by_name = await async_app.add_task("tests.async_app_add", 3, 4)
        pending = await tasks.async_app_add(5, 6).add_task()
        return by_name.args, pending.args

    assert async_to_sync(scenario)() == ([3, 4], [5, 6])


def test_arguments_over_the_size_limit_are_refused():
    with pytest.raises(InvalidTaskCall, match=r"take 2,000,00\d bytes as JSON, more than"):
        tasks.record.add_task("x" * 2_000_000)
    assert TaskRecord.objects.count() == 0
    with override_settings(QTASKS={"MAX_ARGS_SIZE": None}):
        tasks.record.add_task("x" * 2_000_000)
    assert TaskRecord.objects.count() == 1


def test_add_tasks_stores_many_in_one_go():
    made = app.add_tasks(
        [tasks.add(1, 2), tasks.add(a=3, b=4), ("tests.record", ["k"], {})], priority=5
    )
    assert [t.args for t in made] == [[1, 2], [], ["k"]]
    assert [t.kwargs for t in made] == [{}, {"a": 3, "b": 4}, {}]
    stored = {r.uuid: r for r in TaskRecord.objects.all()}
    assert set(stored) == {t.uuid for t in made}
    assert {r.priority for r in stored.values()} == {5}
    assert all(app.get(t.uuid) == t for t in made)


def test_task_add_tasks_takes_argument_tuples():
    made = tasks.add.add_tasks([(i, i) for i in range(1200)], queue="bulk")  # > one chunk
    assert len(made) == TaskRecord.objects.filter(queue="bulk").count() == 1200


def test_add_tasks_stores_every_character_as_given():
    """Bulk rows go to PostgreSQL as COPY text, with its own escapes: backslashes,
    tabs, line breaks and NULs-that-are-not must come back exactly."""
    odd = ["back\\slash", "tab\there", "line\nbreak\r\n", "\\N", "quote'\"", "ünï ✓ 😀", ""]
    made = app.add_tasks(
        [("tests.record", [text], {"k\\ey\t": text}) for text in odd]
        + [tasks.limited_per_account(f"ac\tc\\{n}\n", str(n)) for n in range(2)]
    )
    for task in made:
        record = TaskRecord.objects.get(uuid=task.uuid)
        assert (record.args, record.kwargs) == (task.args, task.kwargs)
        assert (record.concurrency_key, record.max_concurrency) == (
            task.concurrency_key,
            task.max_concurrency,
        )
        assert (record.errors, record.traceback, record.progress) == ([], "", None)
    assert [t.args[0] for t in made[: len(odd)]] == odd
    assert made[-1].concurrency_key == "account:ac\tc\\1\n"


def test_add_tasks_validates_everything_before_writing():
    with pytest.raises(TypeError, match="positional argument 0"):
        app.add_tasks([tasks.add(1, 2), tasks.add(object(), 1)])
    assert not TaskRecord.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_connections_racing_on_a_unique_key_make_one_task():
    """The partial unique index decides, not a check-then-insert: both callers get the
    same task back, and one row exists."""
    import threading

    barrier = threading.Barrier(2, timeout=30)
    results: list = []

    def enqueue(n: int) -> None:
        barrier.wait()  # outside: SQLite's IMMEDIATE transactions queue at BEGIN
        with transaction.atomic():
            results.append(tasks.record.add_task(f"racer-{n}", unique_key="race"))

    in_threads(enqueue, [(0,), (1,)], on_error=barrier.abort)
    assert len({task.uuid for task in results}) == 1
    assert TaskRecord.objects.filter(unique_key="race").count() == 1


# -- prepared statements (PostgreSQL) -------------------------------------------------------
def prepared_inserts() -> list[str]:
    """The INSERTs this session has prepared (the connection add_task() used)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall() if "INSERT INTO" in row[0]]


@pytest.mark.postgres
def test_add_task_prepares_its_insert_once_per_session():
    first = tasks.add.add_task(1, 2)
    second = tasks.add.add_task(3, 4)
    assert len(prepared_inserts()) == 1
    assert TaskRecord.objects.filter(uuid__in=[first.uuid, second.uuid]).count() == 2
    # A rollback makes psycopg forget its statements; the next add_task prepares again.
    with transaction.atomic():
        gone = tasks.add.add_task(5, 6)
        transaction.set_rollback(True)
    kept = tasks.add.add_task(7, 8)
    assert not TaskRecord.objects.filter(uuid=gone.uuid).exists()
    assert TaskRecord.objects.get(uuid=kept.uuid).args == [7, 8]
    assert len(prepared_inserts()) == 1


@pytest.mark.postgres
def test_a_tasks_own_insert_stores_odd_names_and_tags_exactly() -> None:
    """On PostgreSQL a common task's name, queue, priority, retries and tags are written
    into its INSERT's text (fewer parameters); quotes, ``%`` and backslashes in them
    must come back exactly, and each task keeps a statement of its own."""
    from django.test.utils import CaptureQueriesContext

    from django_qtasks.api.queue_tasks import QueueTasks
    from django_qtasks.settings import QTasksSettings

    local = QueueTasks(QTasksSettings())
    odd = ["quote'd", "per%cent %(uuid)s %s", "ünï ✓ 😀", "semi;colon --", 'dq"', "back\\slash"]
    made = []
    with CaptureQueriesContext(connection) as queries:
        for n, text in enumerate(odd):
            local.task(name=f"odd.{text}", tags=[text], retry=n, priority=n - 2)(lambda x: x)
            made.append(local.add_task(f"odd.{text}", text, queue=f"q{n}"))
            made.append(local.add_task(f"odd.{text}", text, queue=f"q{n}"))  # the same again
    # Three have statements of their own; a backslash in the name or the tags (JSON
    # escapes a quote and any non-ASCII character with one) takes the one with parameters.
    literal = [q["sql"] for q in queries if "'odd." in q["sql"]]
    assert len(literal) == 6
    assert len(set(literal)) == 3
    for task in made:
        record = TaskRecord.objects.get(uuid=task.uuid)
        text = task.args[0]
        assert record.task_name == f"odd.{text}"
        assert record.tags == [text]
        assert (record.queue, record.priority, record.max_retries) == (
            task.queue, task.priority, task.max_retries,
        )  # fmt: skip
        assert (record.args, record.status, record.errors, record.unique_key) == (
            [text], "new", [], None,
        )  # fmt: skip
        assert record.run_after == record.created_at == record.updated_at


@pytest.mark.postgres
def test_django_logs_the_insert_with_its_text():
    """Where Django logs queries (DEBUG, assertNumQueries, debug toolbars), the INSERT
    is there with its SQL, as Django's own queries are."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        tasks.add.add_task(1, 2)
    assert len(queries) == 1
    assert "INSERT INTO" in queries[0]["sql"]


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("setting", "pooled", "prepared"),
    [(False, False, False), ("auto", True, False), (True, True, True)],
)
def test_prepared_statements_follow_the_setting_and_the_pooler_sign(setting, pooled, prepared):
    """``"auto"`` prepares unless the alias says a transaction pooler is in front
    (``DISABLE_SERVER_SIDE_CURSORS``): a prepared statement lives in the server session."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    connection.connection._prepared.clear()  # psycopg's own record of them
    options = {"DISABLE_SERVER_SIDE_CURSORS": pooled}
    with (
        override_settings(QTASKS={"PREPARED_STATEMENTS": setting}),
        _alias_settings(connection, options),
    ):
        task = tasks.add.add_task(1, 1)
    assert TaskRecord.objects.filter(uuid=task.uuid).exists()
    assert bool(prepared_inserts()) is prepared


class _alias_settings:
    """Set keys of the connection's settings dict for a block (as a pooled alias has)."""

    def __init__(self, connection, values):
        self.connection, self.values, self.old = connection, values, {}

    def __enter__(self):
        for key, value in self.values.items():
            self.old[key] = self.connection.settings_dict.get(key)
            self.connection.settings_dict[key] = value

    def __exit__(self, *exc):
        for key, value in self.old.items():
            self.connection.settings_dict[key] = value


def test_a_spec_made_without_the_builder_is_checked_like_any_other():
    """TaskSpec is public (a custom Broker may make one): one without encoded arguments
    is encoded and checked by the same code as add_task()'s, before anything is stored."""
    from django_qtasks.api.task import TaskSpec

    def spec(args):
        return TaskSpec(task_name="tests.record", args=args, kwargs={}, queue="default",
                        priority=0, run_after=None, max_retries=0)  # fmt: skip

    task = app.broker.storage.add_many([spec(["k", 1.5]), spec([{"x": None}])])[0]
    assert TaskRecord.objects.get(uuid=task.uuid).args == ["k", 1.5]
    with pytest.raises(TypeError, match="positional argument 0"):
        app.broker.storage.add_many([spec(["fine"]), spec([object()])])
    with pytest.raises(TypeError, match=r"positional argument 0 \(float\)"):
        app.broker.storage.add(spec([float("nan")]))
    assert TaskRecord.objects.count() == 2


@pytest.mark.parametrize("tags", [[["nested"]], [1], "one", None])
def test_a_spec_with_tags_that_are_not_strings_is_refused_and_nothing_stored(tags):
    """Tags are checked at registration; a hand-made TaskSpec's are checked on store."""
    from django_qtasks.api.task import TaskSpec

    bad = TaskSpec(task_name="tests.record", args=["k"], kwargs={}, queue="default",
                   priority=0, run_after=None, max_retries=0, tags=tags)  # fmt: skip
    with pytest.raises(InvalidTaskCall, match="tags must be a list of strings"):
        app.broker.storage.add(bad)
    with pytest.raises(InvalidTaskCall, match="tags must be a list of strings"):
        app.broker.storage.add_many([dataclasses.replace(bad, tags=["fine"]), bad])
    assert not TaskRecord.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("bulk", [False, True])
def test_add_task_honours_django_connection_health_checks(bulk):
    """With ``CONN_HEALTH_CHECKS``, Django replaces a persistent connection that died
    since the last request before the request's first query. The INSERT's own cursor
    must get the same check, or an enqueue that comes first in a request fails."""
    import psycopg
    from django.core.signals import request_started
    from django.db import connection

    options = {"CONN_HEALTH_CHECKS": True, "CONN_MAX_AGE": None}
    with _alias_settings(connection, options):
        connection.close()
        connection.ensure_connection()  # a new connection that reads the settings
        pid = connection.connection.info.backend_pid
        params = connection.get_connection_params()
        with psycopg.connect(**params, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])
        request_started.send(sender=None)  # a new request: health check due
        try:
            if bulk:
                made = app.add_tasks([tasks.add(1, 2), tasks.add(3, 4)])
            else:
                made = [tasks.add.add_task(1, 2)]
        finally:
            connection.close()
    assert TaskRecord.objects.filter(uuid__in=[t.uuid for t in made]).count() == len(made)


def test_what_an_enqueue_works_out_once_follows_the_settings_and_the_registry():
    """add_task() keeps what every call of a task shares (its options, the defaults,
    the checked queue); a task registered since, or a change of QTASKS, must show."""
    own = QueueTasks()
    assert own.add_task("tests.kept_later").priority == 0

    def kept_later() -> None:
        return None

    own.task(name="tests.kept_later", priority=9)(kept_later)
    assert own.add_task("tests.kept_later").priority == 9
    assert own.add_task("tests.kept_unknown").priority == 0
    with override_settings(QTASKS={"DEFAULT_PRIORITY": 3}):
        assert own.add_task("tests.kept_unknown").priority == 3
    with override_settings(QTASKS={"QUEUES": ["mail"], "DEFAULT_QUEUE": "mail"}):
        assert own.add_task("tests.kept_unknown").queue == "mail"
        with pytest.raises(InvalidTaskCall, match="QUEUES"):
            own.add_task("tests.kept_unknown", queue="default")


_typed = pytest.mark.skipif(
    connection.vendor == "sqlite", reason="SQLite enforces no column length or integer width"
)


def _spec(**changes):
    from django_qtasks.api.task import TaskSpec

    spec = TaskSpec(task_name="tests.record", args=["k"], kwargs={}, queue="default",
                    priority=0, run_after=None, max_retries=0)  # fmt: skip
    return dataclasses.replace(spec, **changes)


# Values that pass TaskSpec (a custom Broker may build one) and that the database
# refuses, with the Django exception each must come back as on either path.
_REFUSED_BY_THE_DATABASE = [
    pytest.param({"priority": 101}, "IntegrityError", id="check-constraint"),
    pytest.param({"max_concurrency": 2}, "IntegrityError", id="limit-without-key"),
    pytest.param({"priority": 2**15}, "DataError", id="smallint-overflow", marks=_typed),
    pytest.param({"queue": "q" * 65}, "DataError", id="too-long", marks=_typed),
]


@pytest.mark.parametrize(("changes", "expected"), _REFUSED_BY_THE_DATABASE)
def test_the_bulk_path_raises_the_same_django_errors_as_the_single_path(changes, expected):
    """add_tasks() on PostgreSQL writes with COPY on psycopg's own cursor: its errors
    must come back as Django's, of the same type as add_task()'s for the same row, and
    leave the caller's transaction as a Django error does."""
    import django.db

    expected_type = getattr(django.db, expected)
    bad = _spec(**changes)
    for store in (
        lambda: app.broker.storage.add(bad),
        lambda: app.broker.storage.add_many([_spec(), bad]),
    ):
        with pytest.raises(django.db.DatabaseError) as raised, transaction.atomic():
            store()
        assert type(raised.value) is expected_type, raised.value
    assert not TaskRecord.objects.exists()
