"""Heartbeats, rescue, cancellation, time limits and shutdown, with real threads and rows."""

import datetime as dt
import logging
import threading
from pathlib import Path

import pytest
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from django_qtasks import app
from django_qtasks.models import ConfigEntry, TaskRecord
from tests.helpers import wait_until
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def stale_running(
    worker_id: str, *, attempt: int = 1, max_retries: int = 2, rescues: int = 0
) -> TaskRecord:
    """A row as a worker that died mid-task leaves it."""
    now = timezone.now()
    return TaskRecord.objects.create(
        task_name="tests.record", args=["x"], status="process", worker_id=worker_id,
        attempt=attempt, max_retries=max_retries, rescues=rescues, run_after=now,
        created_at=now, updated_at=now, started_at=now,
    )  # fmt: skip


def beat(worker_id: str, seconds: float) -> None:
    ConfigEntry.objects.update_or_create(
        name="workers",
        key=worker_id,
        defaults={"value": {}, "expires_at": timezone.now() + dt.timedelta(seconds=seconds)},
    )


# -- rescue ------------------------------------------------------------------------------
def test_tasks_of_a_dead_worker_go_back_to_waiting_without_spending_an_attempt():
    lost = stale_running("dead-worker", attempt=1, max_retries=0)
    rescued = app.broker.storage.rescue()
    assert rescued == [(lost.uuid, "retry")]
    lost.refresh_from_db()
    # The run is the worker's loss: the attempt is not spent (the next claim makes it
    # attempt 1 again), one rescue is counted instead.
    assert (lost.status, lost.attempt, lost.rescues, lost.finished_at) == ("retry", 0, 1, None)
    assert lost.worker_id == "dead-worker"
    message = (
        "Task lost: its worker stopped sending heartbeats. Rescued: back to the queue "
        "without spending an attempt."
    )
    assert lost.errors == [{
        "attempt": 1, "at": lost.errors[0]["at"], "worker_id": "dead-worker",
        "type": "django_qtasks.exceptions.WorkerLost", "message": message, "traceback": "",
    }]  # fmt: skip
    assert lost.traceback == message
    assert lost.run_after <= timezone.now()


def test_a_task_lost_more_often_than_the_allowance_ends_error_with_an_error_line(caplog):
    # Its attempts do not matter (it has retries left): the rescues do.
    lost = stale_running("dead-worker", attempt=1, max_retries=5, rescues=3)
    young = stale_running("dead-worker", attempt=1, max_retries=0, rescues=2)
    with caplog.at_level(logging.WARNING, logger="django_qtasks.storage"):
        assert sorted(app.broker.storage.rescue("dead-worker")) == sorted(
            [(lost.uuid, "error"), (young.uuid, "retry")]
        )
    lost.refresh_from_db()
    young.refresh_from_db()
    assert (lost.status, lost.attempt, lost.rescues) == ("error", 1, 4)
    assert lost.finished_at is not None
    message = (
        "Task lost 4 times, more than QTASKS['MAX_RESCUES'] = 3 allows; the last time "
        "its worker process died. It is not run again."
    )
    assert lost.errors[-1]["message"] == lost.traceback == message
    assert (young.status, young.attempt, young.rescues) == ("retry", 0, 3)
    [final] = [r for r in caplog.records if getattr(r, "action", "") == "lost_for_good"]
    assert final.levelno == logging.ERROR
    assert final.task_uuid == str(lost.uuid)
    assert message in final.getMessage()
    [rescue] = [r for r in caplog.records if getattr(r, "action", "") == "rescue"]
    assert (rescue.levelno, rescue.task_uuid) == (logging.WARNING, str(young.uuid))


def test_the_tasks_of_one_dead_worker_come_back_spread_out():
    # Claimed again all together, they would all die again with a task among them that
    # kills its worker every time; each gets its own moment within two seconds.
    lost = [stale_running("dead-worker") for _ in range(20)]
    before = timezone.now()
    assert len(app.broker.storage.rescue()) == len(lost)
    due = sorted(TaskRecord.objects.values_list("run_after", flat=True))
    assert len(set(due)) == len(lost)
    assert before <= due[0]
    assert due[-1] <= before + dt.timedelta(seconds=2.5)
    assert due[-1] - due[0] > dt.timedelta(seconds=0.2)


def test_the_snapshot_counts_the_rescues_from_enqueue_to_claim_to_the_end(run_worker):
    assert tasks.record.add_task("fresh").rescues == 0
    lost = stale_running("dead-worker", rescues=1)
    app.broker.storage.rescue()
    assert app.get(lost.uuid).rescues == 2
    # Whatever reads the row: a claim's snapshot too (it reads the column back).
    [claimed] = app.broker.storage.claim("w-next", None, 5, uuids=[lost.uuid])
    assert (claimed.attempt, claimed.rescues) == (1, 2)
    assert app.broker.storage.rescue("w-next") == [(lost.uuid, "retry")]
    run_worker()
    done = app.get(lost.uuid)
    assert (done.status, done.attempt, done.rescues) == ("success", 1, 3)


def test_a_running_row_at_attempt_0_is_rescued_beside_the_others():
    # A `process` row at attempt 0 (written by hand, or by an older version): taking one
    # off its attempt would break the column's non-negative constraint and fail the
    # whole statement, every time, so that no task would ever be rescued.
    odd = stale_running("dead-worker", attempt=0)
    lost = stale_running("dead-worker", attempt=1)
    assert sorted(app.broker.storage.rescue()) == sorted(
        [(odd.uuid, "retry"), (lost.uuid, "retry")]
    )
    odd.refresh_from_db()
    lost.refresh_from_db()
    assert (odd.status, odd.attempt, odd.rescues) == ("retry", 0, 1)
    assert (lost.status, lost.attempt, lost.rescues) == ("retry", 0, 1)


def test_rows_handed_back_unstarted_keep_their_attempt_and_never_go_below_0():
    odd = stale_running("leaving", attempt=0)
    first = stale_running("leaving", attempt=1)
    later = stale_running("leaving", attempt=3)
    assert app.broker.storage.release("leaving", [odd.uuid, first.uuid, later.uuid]) == 3
    rows = TaskRecord.objects.in_bulk([odd.uuid, first.uuid, later.uuid])
    back = [(rows[t.uuid].status, rows[t.uuid].attempt, rows[t.uuid].worker_id)
            for t in (odd, first, later)]  # fmt: skip
    assert back == [("new", 0, ""), ("new", 0, ""), ("retry", 2, "")]


@override_settings(QTASKS={"MAX_RESCUES": 0})
def test_no_rescue_allowed_ends_the_first_lost_run_in_error():
    lost = stale_running("dead-worker")
    assert app.broker.storage.rescue() == [(lost.uuid, "error")]
    assert (
        app.get(lost.uuid)
        .errors[-1]["message"]
        .startswith("Task lost 1 time, more than QTASKS['MAX_RESCUES'] = 0 allows")
    )


def test_live_workers_keep_their_tasks_and_expired_ones_lose_them():
    beat("alive", 60)
    beat("expired", -1)
    mine = stale_running("alive")
    theirs = stale_running("expired")
    assert app.broker.storage.rescue() == [(theirs.uuid, "retry")]
    mine.refresh_from_db()
    assert mine.status == "process"


def test_a_rescued_task_runs_again_and_the_old_worker_cannot_overwrite_it(run_worker):
    lost = stale_running("dead-worker")
    snapshot = app.get(lost.uuid)
    app.broker.storage.rescue()
    run_worker()
    done = app.get(lost.uuid)
    assert (done.status, done.attempt) == ("success", 1)  # the lost run spent nothing
    # The dead worker comes back to life and reports: nothing changes.
    from django_qtasks.api.task import Outcome

    assert app.broker.storage.finish(snapshot, Outcome(status="error")) is False
    assert app.get(lost.uuid).status == "success"


@pytest.mark.postgres
def test_two_rescuers_racing_rescue_each_task_once():
    lost = {stale_running(f"dead-{i % 5}").uuid for i in range(200)}
    results: list[list] = [[], []]
    barrier = threading.Barrier(2)

    def rescuer(slot: int) -> None:
        try:
            barrier.wait()
            results[slot] = app.broker.storage.rescue()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=rescuer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first, second = ({u for u, _ in r} for r in results)
    assert not first & second
    assert first | second == lost
    assert all(len(r.errors) == 1 for r in TaskRecord.objects.all())


# -- a worker in a thread ----------------------------------------------------------------
@pytest.fixture
def worker_thread():
    """Start a worker in a thread; the test stops it (or it is stopped at the end)."""
    started: list = []

    def start(**options):
        options.setdefault("concurrency", 2)
        options.setdefault("poll_interval", 0.02)
        starter = app.build_starter(**options)
        result: dict = {}
        thread = threading.Thread(
            target=lambda: result.update(code=starter.run(install_signals=False))
        )
        thread.start()
        started.append((starter, thread))
        return starter, thread, result

    yield start
    for starter, thread in started:
        starter.request_stop(force=True)
        thread.join(timeout=30)


def test_a_running_worker_is_registered_with_its_details(worker_thread):
    starter, thread, result = worker_thread(queues=["default"], concurrency=3)
    wid = starter.worker.worker_id
    info = wait_until(lambda: app.broker.live_workers().get(wid), message="registration")
    assert info["queues"] == ["default"]
    assert info["concurrency"] == 3
    assert {"host", "pid", "started_at", "last_beat", "running"} <= set(info)
    starter.request_stop()
    thread.join(timeout=30)
    assert result["code"] == 0
    assert wid not in app.broker.live_workers()


def test_cancelling_a_waiting_task_means_it_never_runs(run_worker):
    task = tasks.record.add_task("never")
    cancelled = app.cancel(task.uuid, "not needed")
    assert cancelled.status == "cancel"
    assert cancelled.errors[0]["message"] == "not needed"
    run_worker()
    assert not Execution.objects.filter(key="never").exists()
    assert app.get(task.uuid).status == "cancel"


def test_cancelling_a_finished_task_changes_nothing(run_worker):
    task = tasks.add.add_task(1, 1)
    run_worker()
    assert task.cancel().status == "success"


def test_a_running_sync_task_stops_at_its_next_cancellation_point(worker_thread):
    with_fast_beat = {"HEARTBEAT_INTERVAL": 0.05, "HEARTBEAT_TIMEOUT": 5}
    from django.test import override_settings

    with override_settings(QTASKS={"POLL_INTERVAL": 0.02, **with_fast_beat}):
        task = tasks.cooperative.add_task("coop")
        worker_thread()
        wait_until(lambda: Execution.objects.filter(key="coop").exists(), message="start")
        app.cancel(task.uuid)
        done = wait_until(lambda: (t := app.get(task.uuid)).is_finished and t, timeout=20)
    assert done.status == "cancel"
    assert done.progress["done"] < 3000


def test_a_running_async_task_is_cancelled_at_once(worker_thread):
    from django.test import override_settings

    with override_settings(QTASKS={"HEARTBEAT_INTERVAL": 0.05, "HEARTBEAT_TIMEOUT": 5}):
        task = tasks.async_forever.add_task("af")
        worker_thread()
        wait_until(lambda: Execution.objects.filter(key="af").exists(), message="start")
        app.cancel(task.uuid, "stop it")
        done = wait_until(lambda: (t := app.get(task.uuid)).is_finished and t, timeout=20)
    assert done.status == "cancel"
    assert done.errors[-1]["message"] == "stop it"


def test_a_sync_task_over_max_time_is_interrupted_and_its_thread_reused(run_worker):
    slow = tasks.busy.add_task(30)
    after = tasks.add.add_task(2, 2)
    assert run_worker(concurrency=1) == 0
    done = app.get(slow.uuid)
    assert done.status == "error"
    assert "max_time of 0.3 s" in done.errors[0]["message"]
    assert done.errors[0]["type"] == "django_qtasks.timelimit.TaskTimeLimitExceeded"
    assert (done.finished_at - done.started_at).total_seconds() < 10
    assert app.get(after.uuid).returning == 4


def test_a_quick_sync_task_is_not_touched_by_its_time_limit(run_worker):
    task = tasks.busy.add_task(0.01)
    run_worker()
    assert app.get(task.uuid).status == "success"


def test_when_the_grace_runs_out_unfinished_tasks_are_handed_back(worker_thread, tmp_path: Path):
    release = tmp_path / "release"
    task = tasks.wait_for_file.add_task("grace", str(release), 20)
    starter, thread, result = worker_thread(grace=0.2)
    wait_until(lambda: Execution.objects.filter(key="grace").exists(), message="start")
    starter.request_stop()
    thread.join(timeout=30)
    assert result["code"] == 1
    handed_back = app.get(task.uuid)
    # Handed back without spending the attempt (the task has no retries at all).
    assert (handed_back.status, handed_back.attempt, handed_back.max_retries) == ("retry", 0, 0)
    assert handed_back.errors[-1]["attempt"] == 1
    assert handed_back.errors[-1]["message"].startswith(
        "Task lost: its worker left before it finished. Rescued"
    )
    assert TaskRecord.objects.get(uuid=task.uuid).rescues == 1
    # Let the abandoned thread end, so that it lets go of the test database.
    release.touch()
    wait_until(lambda: not any(t.is_alive() for t in starter.worker.pool.threads), message="thread")
