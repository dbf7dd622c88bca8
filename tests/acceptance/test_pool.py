"""``qtasks_worker --processes``: a supervising parent and real child processes."""

from __future__ import annotations

import os
import signal

import pytest
from django.test import override_settings

from django_qtasks import app
from django_qtasks.models import TaskRecord
from tests.helpers import wait_until
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)

FAST = ["--poll-interval", "0.05", "-v", "2"]


def finished(task, timeout: float = 60):
    return wait_until(
        lambda: (t := app.get(task.uuid)).is_finished and t,
        timeout=timeout,
        message=f"task {task.task_name} to finish",
    )


def child_pids() -> set[int]:
    return {info["pid"] for info in app.broker.live_workers().values()}


def test_a_burst_pool_runs_every_task_once_across_its_children(worker_processes, tmp_path):
    queued = [tasks.record.add_task(f"p{i}") for i in range(60)]
    proc = worker_processes.start(
        "--processes", "2", "--concurrency", "2", "--burst", *FAST, log=tmp_path / "log"
    )
    assert proc.wait(timeout=90) == 0, (tmp_path / "log").read_text()[-3000:]
    assert {app.get(t.uuid).status for t in queued} == {"success"}
    assert Execution.objects.count() == 60
    workers = set(TaskRecord.objects.values_list("worker_id", flat=True))
    assert workers  # children ran them (one may have been quick enough to take all)
    assert all(w.endswith(("/0", "/1")) for w in workers)


def test_a_task_blocked_in_c_is_ended_at_its_hard_time_limit(worker_processes, tmp_path):
    stuck = tasks.sleepy.add_task("stuck", 60)
    worker_processes.start("--processes", "1", *FAST, log=tmp_path / "log")
    done = finished(stuck, timeout=30)
    assert done.status == "error"
    assert "max_time of 0.5 s" in done.errors[-1]["message"]
    assert (done.finished_at - done.started_at).total_seconds() < 15
    # The pool carries on with a fresh child.
    after = tasks.add.add_task(2, 3)
    assert finished(after).returning == 5


def test_a_child_that_dies_has_its_task_rescued_at_once(worker_processes, tmp_path):
    with override_settings(QTASKS={"HEARTBEAT_TIMEOUT": 600, "HEARTBEAT_INTERVAL": 5}):
        doomed = tasks.hard_exit.add_task("boom")
    worker_processes.start("--processes", "1", *FAST, log=tmp_path / "log")
    done = finished(doomed, timeout=30)  # far sooner than a 600 s heartbeat expiry
    assert done.status == "error"  # no retries: the crash spent its only attempt
    assert done.errors[-1]["message"] == "Task lost: its worker process died."
    assert finished(tasks.add.add_task(1, 1)).status == "success"


def test_sigkill_of_a_child_mid_task_reruns_the_task(worker_processes, tmp_path):
    task = tasks.flaky.add_task("victim", 0)  # retries allowed, succeeds when it runs
    slow = tasks.sleepy.add_task("slow", 0.2)
    del slow
    blocker = tasks.stubborn.add_task("killme", 60)
    worker_processes.start("--processes", "1", "--concurrency", "3", *FAST, log=tmp_path / "log")
    wait_until(lambda: Execution.objects.filter(key="killme").exists(), message="start")
    pid = wait_until(lambda: next(iter(child_pids()), None), message="a child")
    os.kill(pid, signal.SIGKILL)
    again = finished(blocker, timeout=30)
    assert again.status == "error"  # stubborn has no retries; the crash spent it
    assert again.errors[-1]["message"] == "Task lost: its worker process died."
    assert finished(task).status == "success"
    wait_until(lambda: child_pids() and pid not in child_pids(), message="a new child")


def test_a_cancelled_task_that_ignores_it_is_ended_by_force(worker_processes, tmp_path):
    with override_settings(QTASKS={"HEARTBEAT_INTERVAL": 0.2, "HEARTBEAT_TIMEOUT": 5}):
        task = tasks.stubborn.add_task("deaf", 60)
        worker_processes.start("--processes", "1", *FAST, log=tmp_path / "log")
        wait_until(lambda: Execution.objects.filter(key="deaf").exists(), message="start")
        app.cancel(task.uuid, "enough")
        done = finished(task, timeout=30)
    assert done.status == "cancel"
    assert done.errors[-1]["message"] == "enough"


def test_children_are_replaced_after_max_tasks(worker_processes, tmp_path):
    queued = [tasks.pid.add_task() for _ in range(9)]
    proc = worker_processes.start(
        "--processes",
        "1",
        "--concurrency",
        "1",
        "--max-tasks-per-child",
        "3",
        *FAST,
        log=tmp_path / "log",
    )
    pids = {finished(t).returning for t in queued}
    assert len(pids) == 3
    assert proc.poll() is None


def test_sigterm_to_the_parent_lets_children_finish_their_tasks(worker_processes, tmp_path):
    task = tasks.sleepy.add_task("finishing", 0.2)
    log = tmp_path / "log"
    proc = worker_processes.start("--processes", "2", *FAST, log=log)
    wait_until(lambda: Execution.objects.filter(key="finishing").exists(), message="start")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    assert app.get(task.uuid).status == "success"
    wait_until(lambda: not app.broker.live_workers(), message="children to deregister")
