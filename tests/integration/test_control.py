"""Steering tasks and queues from outside: retry, pause and resume, name resolvers."""

import pytest
from django.test import override_settings

from django_qtasks import app
from django_qtasks.api.queue_tasks import TaskRegistry
from django_qtasks.exceptions import InvalidTaskCall, TaskNotRegistered
from tests.helpers import wait_until
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def test_retry_gives_a_failed_task_one_more_attempt(run_worker):
    task = tasks.always_fail.add_task("again")  # retry=1: two attempts, then error
    run_worker()
    assert app.get(task.uuid).status == "error"
    requeued = app.retry(task.uuid)
    assert (requeued.status, requeued.finished_at, requeued.max_retries) == ("new", None, 2)
    run_worker()
    done = app.get(task.uuid)
    assert (done.status, done.attempt, len(done.errors)) == ("error", 3, 3)
    assert Execution.objects.filter(key="again").count() == 3


def test_retry_brings_back_a_cancelled_task_and_leaves_others_alone(run_worker):
    cancelled = tasks.record.add_task("back")
    app.cancel(cancelled.uuid)
    waiting = tasks.record.add_task("waiting")
    assert app.retry(waiting.uuid).status == "new"  # unchanged
    assert app.retry(cancelled.uuid).status == "new"
    run_worker()
    assert app.get(cancelled.uuid).status == "success"


def test_a_paused_queue_is_not_claimed_until_resumed(run_worker):
    app.pause_queue("mail")
    assert app.paused_queues() == {"mail"}
    held = tasks.record.add_task("held", queue="mail")
    free = tasks.record.add_task("free", queue="default")
    run_worker()
    assert (app.get(held.uuid).status, app.get(free.uuid).status) == ("new", "success")
    app.resume_queue("mail")
    assert app.paused_queues() == set()
    run_worker()
    assert app.get(held.uuid).status == "success"


def test_a_running_worker_obeys_pause_within_a_heartbeat(run_worker):
    import threading

    with override_settings(
        QTASKS={"POLL_INTERVAL": 0.02, "HEARTBEAT_INTERVAL": 0.05, "HEARTBEAT_TIMEOUT": 5}
    ):
        starter = app.build_starter(concurrency=1)
        thread = threading.Thread(target=starter.run, kwargs={"install_signals": False})
        thread.start()
        try:
            first = tasks.record.add_task("before", queue="reports")
            wait_until(lambda: app.get(first.uuid).status == "success")
            app.pause_queue("reports")
            wait_until(lambda: starter.worker.paused == {"reports"}, message="the pause")
            later = tasks.record.add_task("during", queue="reports")
            other = tasks.record.add_task("other", queue="default")
            wait_until(lambda: app.get(other.uuid).status == "success")
            assert app.get(later.uuid).status == "new"
            app.resume_queue("reports")
            wait_until(lambda: app.get(later.uuid).status == "success", message="resume")
        finally:
            starter.request_stop()
            thread.join(timeout=30)


def test_pause_checks_the_queue_name():
    with pytest.raises(InvalidTaskCall):
        app.pause_queue("no spaces allowed")


def test_resolvers_answer_only_for_their_prefix_and_only_what_they_know():
    registry = TaskRegistry()
    known = tasks.add
    registry.add_resolver("ext:", lambda name: known if name == "ext:add" else None)
    assert registry.get("ext:add") is known
    assert "ext:add" in registry  # cached
    with pytest.raises(TaskNotRegistered):
        registry.get("ext:os.system")
    with pytest.raises(TaskNotRegistered):
        registry.get("other:add")


def test_retry_refuses_to_break_a_unique_key(run_worker):
    from django_qtasks.exceptions import TaskConflict

    first = tasks.record.add_task("u", unique_key="only-one")
    app.cancel(first.uuid)
    tasks.record.add_task("u2", unique_key="only-one")  # the key is free again, and taken
    with pytest.raises(TaskConflict, match="unique_key"):
        app.retry(first.uuid)
    assert app.get(first.uuid).status == "cancel"


def test_expired_worker_rows_are_purged():
    from django_qtasks.storage.interface import WORKERS

    config = app.broker.storage.global_config
    config.set(WORKERS, "gone", {}, ttl=-1)
    config.set(WORKERS, "here", {}, ttl=60)
    assert app.broker.forget_dead_workers() == 1
    assert set(config.items(WORKERS)) == {"here"}


@pytest.mark.postgres
def test_an_idle_worker_wakes_on_enqueue_not_on_its_next_poll():
    import threading
    import time

    with override_settings(QTASKS={"POLL_INTERVAL": 30}):
        starter = app.build_starter(concurrency=1)
        thread = threading.Thread(target=starter.run, kwargs={"install_signals": False})
        thread.start()
        try:
            wait_until(lambda: app.live_workers(), message="the worker")
            # Its first claim found nothing: it is now asleep for up to 30 s.
            wait_until(lambda: starter.worker.in_flight == 0)
            enqueued = time.monotonic()
            task = tasks.add.add_task(1, 2)
            wait_until(lambda: app.get(task.uuid).status == "success", timeout=10)
            assert time.monotonic() - enqueued < 5
            delayed = tasks.add.add_task(2, 2, run_after=60)  # not ready: no wake-up needed
            assert app.get(delayed.uuid).status == "new"
        finally:
            starter.request_stop()
            thread.join(timeout=30)
        assert not thread.is_alive()


@pytest.mark.postgres
def test_no_listening_when_turned_off():
    with override_settings(QTASKS={"LISTEN_NOTIFY": False}):
        assert app.broker._listener() is None


def _worker_in_thread(**options):
    import threading

    starter = app.build_starter(concurrency=1, **options)
    thread = threading.Thread(target=starter.run, kwargs={"install_signals": False})
    thread.start()
    return starter, thread


def test_an_idle_worker_sleeps_until_the_earliest_delayed_task_not_a_whole_poll():
    import time

    with override_settings(QTASKS={"POLL_INTERVAL": 30}):
        task = tasks.add.add_task(1, 1, run_after=1.0)
        enqueued = time.monotonic()
        starter, thread = _worker_in_thread()
        try:
            wait_until(lambda: app.get(task.uuid).status == "success", timeout=15)
            assert time.monotonic() - enqueued < 10  # not the 30 s poll
        finally:
            starter.request_stop()
            thread.join(timeout=30)


@pytest.mark.postgres
def test_a_delayed_task_enqueued_while_the_worker_sleeps_runs_when_due():
    import time

    with override_settings(QTASKS={"POLL_INTERVAL": 30}):
        starter, thread = _worker_in_thread()
        try:
            wait_until(lambda: app.live_workers(), message="the worker")
            task = tasks.add.add_task(2, 2, run_after=1.5)
            enqueued = time.monotonic()
            wait_until(lambda: app.get(task.uuid).status == "success", timeout=15)
            elapsed = time.monotonic() - enqueued
            assert 1.0 < elapsed < 10, elapsed
        finally:
            starter.request_stop()
            thread.join(timeout=30)
