"""What the worker and the TaskExecutor make of each kind of task (in-process worker)."""

import threading

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings

from django_qtasks import AsyncResult, SyncResult, app
from django_qtasks.exceptions import ResultTimeout
from django_qtasks.signals import task_finished, task_started
from django_qtasks.worker.executor import TaskExecutor, retry_delay
from tests.testapp import middlewares, tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def finished(task):
    return app.get(task.uuid)


def test_success_stores_the_result_and_timings(run_worker):
    task = tasks.add.add_task(2, 3)
    assert run_worker() == 0
    done = finished(task)
    assert (done.status, done.returning, done.attempt, done.errors) == ("success", 5, 1, [])
    assert done.created_at <= done.started_at <= done.finished_at
    assert done.worker_id


# Integers past 64 bits, the edges of 64, and text from every plane: JSON text in the
# database, never parsed there (MariaDB's JSON is text too), so nothing is rounded.
# (No NUL: PostgreSQL's jsonb refuses \u0000.)
BIG = 2**70 + 1
ODD_TEXT = "ünï ✓ 😀 \\ \t \" ' \U0010ffff 中文"


def test_arguments_and_results_round_trip_exactly(run_worker):
    """As stored, as claimed and as returned: the same values on every database."""
    big = tasks.add.add_task(BIG, -(2**63))
    edge = tasks.add.add_task(2**64 - 1, 1)
    text = tasks.record.add_task(ODD_TEXT)
    for task in (big, edge, text):
        assert app.get(task.uuid).args == task.args  # stored as given
    assert run_worker() == 0
    assert finished(big).returning == BIG - 2**63
    assert finished(edge).returning == 2**64
    assert (finished(text).args, finished(text).returning) == ([ODD_TEXT], ODD_TEXT)


def test_retries_until_success_and_keeps_the_history(run_worker):
    task = tasks.flaky.add_task("f", 2)
    run_worker()
    done = finished(task)
    assert (done.status, done.returning, done.attempt) == ("success", 3, 3)
    assert [e["attempt"] for e in done.errors] == [1, 2]
    assert [e["type"] for e in done.errors] == ["builtins.ConnectionError"] * 2
    assert "flaky failure 2" in done.errors[1]["traceback"]
    assert Execution.objects.filter(key="f").count() == 3


def test_retries_run_out_and_the_task_ends_error(run_worker):
    task = tasks.always_fail.add_task("a")
    run_worker()
    done = finished(task)
    assert (done.status, done.attempt, len(done.errors)) == ("error", 2, 2)
    assert "RuntimeError: boom a" in done.traceback
    assert Execution.objects.filter(key="a").count() == 2


def test_retry_on_exc_limits_which_errors_are_retried(run_worker):
    task = tasks.fail_value.add_task("v")
    run_worker()
    done = finished(task)
    assert (done.status, done.attempt) == ("error", 1)
    assert done.errors[0]["type"] == "builtins.ValueError"


def test_a_retry_waits_for_its_backoff(run_worker):
    with override_settings(QTASKS={"DEFAULT_RETRY": 1, "DEFAULT_RETRY_BACKOFF": 600}):
        task = tasks.add.add_task(1, "x")  # a TypeError, retried after the settings' backoff
        run_worker()
    done = finished(task)
    assert (done.status, done.attempt) == ("retry", 1)
    wait = (done.run_after - done.updated_at).total_seconds()
    assert 300 <= wait <= 600


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    for attempt, base in [(1, 2.0), (2, 4.0), (3, 8.0)]:
        delays = [retry_delay(2.0, attempt, cap=3600) for _ in range(200)]
        assert all(base / 2 <= d <= base for d in delays)
        assert len(set(delays)) > 1
    assert retry_delay(2.0, 30, cap=60) <= 60
    assert retry_delay(0, 5, cap=60) == 0


def test_async_and_generator_tasks_return_their_results(run_worker):
    a = tasks.async_add.add_task(4, 5)
    g = tasks.gen.add_task(3)
    ag = tasks.agen.add_task(3)
    run_worker()
    assert [finished(t).returning for t in (a, g, ag)] == [9, [0, 1, 2], [0, 2, 4]]


def test_echo_tasks_get_their_context_and_report_progress(run_worker):
    task = tasks.echo.add_task("t")
    run_worker()
    done = finished(task)
    assert done.returning == {"uuid": str(task.uuid), "attempt": 1, "tag": "t"}
    assert done.progress == {"done": 1, "total": 2, "message": "half"}


def test_a_task_may_cancel_itself(run_worker):
    task = tasks.cancel_me.add_task()
    run_worker()
    done = finished(task)
    assert done.status == "cancel"
    assert done.errors[0]["message"] == "changed my mind"


def test_a_non_json_result_ends_error_with_a_clear_message(run_worker):
    task = tasks.bad_result.add_task()
    run_worker()
    done = finished(task)
    assert done.status == "error"
    assert "returned a set, which cannot be stored as JSON" in done.errors[0]["message"]


def test_a_result_nested_past_the_encoder_ends_error_without_retries(run_worker):
    # Past the JSON encoder's recursion on every Python (3.10 gives up near 1,000
    # levels, 3.13 near 20,000); shallower ones are the database's to refuse.
    task = tasks.deep_result.add_task("deep", 100_000)
    assert run_worker() == 0
    done = finished(task)
    assert done.status == "error"
    assert Execution.objects.filter(key="deep").count() == 1  # retry=3, yet never retried
    assert [entry["type"] for entry in done.errors] == ["django_qtasks.executor.NotJSONResult"]
    assert done.errors[0]["message"].startswith(
        "The task returned a list nested too deep to be stored as JSON: maximum recursion"
    )


def test_async_tasks_are_stopped_at_max_time(run_worker):
    task = tasks.async_slow.add_task()
    run_worker()
    done = finished(task)
    assert done.status == "error"
    assert "max_time of 0.2 s" in done.errors[0]["message"]


def test_system_exit_in_a_task_does_not_end_the_worker(run_worker):
    bad = tasks.call_exit.add_task()
    good = tasks.add.add_task(1, 1)
    assert run_worker(concurrency=1) == 0
    assert finished(bad).status == "error"
    assert finished(bad).errors[0]["type"] == "builtins.SystemExit"
    assert finished(good).status == "success"


def test_an_unregistered_task_name_ends_error_and_the_worker_goes_on(run_worker):
    ghost = app.add_task("no.such.task", 1)
    good = tasks.add.add_task(1, 2)
    seen = []

    def on_signal(sender, task, **kwargs):
        seen.append((task.uuid, kwargs.get("outcome") and kwargs["outcome"].status))

    # No code of an unknown task runs, so neither signal is sent for it (docs/tasks.md).
    task_started.connect(on_signal)
    task_finished.connect(on_signal)
    try:
        assert run_worker(concurrency=1) == 0
    finally:
        task_started.disconnect(on_signal)
        task_finished.disconnect(on_signal)
    assert finished(ghost).status == "error"
    assert "No task named 'no.such.task' is registered" in finished(ghost).errors[0]["message"]
    assert finished(good).returning == 3
    assert seen == [(good.uuid, None), (good.uuid, "success")]


def test_higher_priority_runs_first_across_queues(run_worker):
    order = [("low", -10, "a"), ("mid", 0, "b"), ("top", 50, "a"), ("high", 10, "b")]
    for key, priority, queue in order:
        tasks.record.add_task(key, priority=priority, queue=queue)
    run_worker(concurrency=1)
    ran = list(Execution.objects.order_by("id").values_list("key", flat=True))
    assert ran == ["top", "high", "mid", "low"]


def test_the_worker_only_takes_its_queues(run_worker):
    mine = tasks.record.add_task("mine", queue="mail")
    other = tasks.record.add_task("other", queue="reports")
    run_worker(queues=["mail"])
    assert finished(mine).status == "success"
    assert finished(other).status == "new"


def test_global_and_task_middlewares_wrap_the_call(run_worker):
    middlewares.CALLS.clear()
    with override_settings(
        QTASKS={"MIDDLEWARES_BEFORE": ["tests.testapp.middlewares.Recorder"],
                "MIDDLEWARES_AFTER": ["tests.testapp.middlewares.Recorder"]}
    ):
        tasks.add.add_task(1, 1)
        run_worker()
    assert middlewares.CALLS == [
        ("before", "tests.testapp.tasks.add", 1),
        ("after", "tests.testapp.tasks.add", "success"),
    ]


def test_a_failing_after_middleware_turns_the_task_into_an_error(run_worker):
    definition = app.task(
        name="tests.with_broken_after", middlewares_after=[middlewares.FailsAfter]
    )(
        lambda: 1
    )
    task = definition.add_task()
    run_worker()
    done = finished(task)
    assert done.status == "error"
    assert done.errors[0]["message"] == "middleware broke"


class DoublingExecutor(TaskExecutor):
    def call(self, definition, args, kwargs, ctx):
        return 2 * super().call(definition, args, kwargs, ctx)


def test_a_task_can_bring_its_own_executor(run_worker):
    definition = app.task(name="tests.doubled", executor=DoublingExecutor)(lambda x: x)
    task = definition.add_task(21)
    run_worker()
    assert finished(task).returning == 42


def test_started_and_finished_signals(run_worker):
    seen = []

    def on_start(sender, task, **kwargs):
        seen.append(("started", task.uuid, task.status))

    def on_finish(sender, task, outcome, **kwargs):
        seen.append(("finished", task.uuid, outcome.status))

    # The signals keep their receivers per sender: one sent before the receivers were
    # connected, and one after they left, must not hide them or keep them.
    tasks.add.add_task(0, 0)
    run_worker()
    task_started.connect(on_start)
    task_finished.connect(on_finish)
    try:
        task = tasks.add.add_task(1, 1)
        run_worker()
    finally:
        task_started.disconnect(on_start)
        task_finished.disconnect(on_finish)
    tasks.add.add_task(2, 2)
    run_worker()
    assert seen == [("started", task.uuid, "process"), ("finished", task.uuid, "success")]


@pytest.fixture
def background_worker():
    """A worker running in a thread until the test ends (for waiting on results)."""
    starter = app.build_starter(concurrency=2, poll_interval=0.02)
    thread = threading.Thread(target=starter.run, kwargs={"install_signals": False})
    thread.start()
    yield starter
    starter.request_stop()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_add_task_with_timeout_returns_the_finished_task(background_worker):
    done = tasks.add.add_task(20, 22, timeout=20)
    assert (done.status, done.returning) == ("success", 42)


def test_results_wait_for_the_task(background_worker):
    task = tasks.add.add_task(1, 2)
    assert SyncResult(task.uuid).result(timeout=20).returning == 3
    other = tasks.add.add_task(3, 4)
    assert async_to_sync(AsyncResult(other.uuid).result)(timeout=20).returning == 7


def test_result_timeout_raises_with_the_last_snapshot():
    task = tasks.add.add_task(1, 2)  # no worker runs
    with pytest.raises(ResultTimeout, match="still 'new'") as info:
        SyncResult(task.uuid).result(timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert info.value.task.uuid == task.uuid


def test_an_async_tasks_own_timeout_error_is_its_own(run_worker):
    task = tasks.async_own_timeout.add_task()
    run_worker()
    done = finished(task)
    assert (done.status, done.attempt) == ("error", 3)
    assert {e["type"] for e in done.errors} == {"builtins.TimeoutError"}
    assert done.errors[0]["message"] == "upstream took too long"


def test_a_non_json_result_is_not_retried(run_worker):
    task = tasks.bad_result_with_retries.add_task("nj")
    run_worker()
    assert (finished(task).status, finished(task).attempt) == ("error", 1)
    assert Execution.objects.filter(key="nj").count() == 1


def test_async_tasks_report_progress(run_worker):
    task = tasks.async_progress.add_task()
    run_worker()
    done = finished(task)
    assert (done.status, done.progress) == ("success", {"done": 3, "total": 4, "message": "nearly"})


def test_a_big_argument_runs_and_the_worker_goes_on(run_worker):
    big = tasks.length.add_task("y" * 900_000)
    after = tasks.add.add_task(1, 1)
    run_worker(concurrency=1)
    assert finished(big).returning == 900_000
    assert finished(after).returning == 2


def test_a_failing_before_middleware_fails_the_task_and_skips_it(run_worker):
    definition = app.task(
        name="tests.with_broken_before", middlewares_before=[middlewares.FailsBefore]
    )(lambda: Execution.objects.create(key="ran"))
    task = definition.add_task()
    run_worker()
    done = finished(task)
    assert done.status == "error"
    assert done.errors[0]["message"] == "middleware refused"
    assert not Execution.objects.filter(key="ran").exists()


@pytest.mark.postgres
def test_a_connection_dropped_before_the_result_is_saved_is_mended(run_worker):
    task = tasks.drop_my_connection.add_task()
    after = tasks.add.add_task(2, 2)
    assert run_worker(concurrency=1) == 0
    assert (finished(task).status, finished(task).returning) == ("success", "dropped")
    assert finished(after).returning == 4


@pytest.mark.postgres
def test_an_outcome_the_database_refuses_ends_error_instead_of_retrying_forever(run_worker):
    task = tasks.nul_result.add_task()
    after = tasks.add.add_task(1, 2)
    assert run_worker(concurrency=1) == 0
    done = finished(task)
    assert done.status == "error"
    assert done.errors[-1]["type"] == "django_qtasks.exceptions.OutcomeNotStored"
    assert finished(after).returning == 3


def test_a_task_raising_keyboard_interrupt_does_not_kill_its_thread(run_worker):
    definition = app.task(name="tests.kbd")(lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    task = definition.add_task()
    after = tasks.add.add_task(2, 2)
    assert run_worker(concurrency=1) == 0
    assert finished(task).errors[0]["type"] == "builtins.KeyboardInterrupt"
    assert finished(after).returning == 4


def test_a_signal_receiver_that_raises_does_not_stall_the_worker(run_worker, caplog):
    def broken(sender, **kwargs):
        raise RuntimeError("receiver broke")

    task_started.connect(broken)
    task_finished.connect(broken)
    try:
        first = tasks.add.add_task(1, 1)
        second = tasks.add.add_task(2, 2)
        assert run_worker(concurrency=1) == 0
    finally:
        task_started.disconnect(broken)
        task_finished.disconnect(broken)
    assert [finished(t).returning for t in (first, second)] == [2, 4]
    assert "Signal receiver" in caplog.text
