"""``qtasks_worker --processes``: a supervising parent and real child processes."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest
from django.test import override_settings

from django_qtasks import app
from django_qtasks.models import TaskRecord
from django_qtasks.worker.pool import ChildWorker
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
    proc = worker_processes.start("--processes", "2", "--concurrency", "2", "--burst", *FAST,
                                  log=tmp_path / "log")
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


def test_a_task_that_kills_its_child_every_time_ends_error_after_the_allowance(
    worker_processes, tmp_path
):
    with override_settings(QTASKS={"HEARTBEAT_TIMEOUT": 600, "HEARTBEAT_INTERVAL": 5}):
        doomed = tasks.hard_exit.add_task("boom")
    worker_processes.start("--processes", "1", *FAST, log=tmp_path / "log")
    # Each death is rescued at once (far sooner than a 600 s heartbeat expiry), without
    # spending the task's one attempt, until the rescue allowance (3) is spent.
    done = finished(doomed, timeout=60)
    assert done.status == "error"
    assert Execution.objects.filter(key="boom").count() == 4
    assert [e["attempt"] for e in done.errors] == [1, 1, 1, 1]
    assert done.errors[-1]["message"] == (
        "Task lost 4 times, more than QTASKS['MAX_RESCUES'] = 3 allows; the last time "
        "its worker process died. It is not run again."
    )
    assert TaskRecord.objects.get(uuid=doomed.uuid).rescues == 4
    assert finished(tasks.add.add_task(1, 1)).status == "success"


def test_sigkill_of_a_child_mid_task_reruns_the_task(worker_processes, tmp_path):
    task = tasks.flaky.add_task("victim", 0)
    slow = tasks.sleepy.add_task("slow", 0.2)
    del slow
    release = tmp_path / "release"
    blocker = tasks.wait_for_file.add_task("killme", str(release), 60)  # no retries
    worker_processes.start("--processes", "1", "--concurrency", "3", *FAST, log=tmp_path / "log")
    wait_until(lambda: Execution.objects.filter(key="killme").exists(), message="start")
    pid = wait_until(lambda: next(iter(child_pids()), None), message="a child")
    os.kill(pid, signal.SIGKILL)
    release.touch()
    again = finished(blocker, timeout=30)
    # The crash was the worker's loss, not the task's: it ran again on its one attempt.
    assert (again.status, again.attempt) == ("success", 1)
    assert again.errors[-1]["message"].startswith("Task lost: its worker process died.")
    assert Execution.objects.filter(key="killme").count() == 2  # at-least-once
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
    proc = worker_processes.start("--processes", "1", "--concurrency", "1",
                                  "--max-tasks-per-child", "3", *FAST, log=tmp_path / "log")
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


def test_the_parent_hears_only_of_tasks_it_may_have_to_end():
    """A message per task start and end cost more than a short task: a child tells its
    parent only of tasks with a hard time limit or a cancel, and never of a cancel
    after its task's end (the parent would end the child for a finished task)."""
    heard, said = multiprocessing.Pipe(duplex=False)
    child = ChildWorker(app, to_parent=said, max_tasks=None, queues=None, concurrency=1)
    plain, limited, cancelled, late = (tasks.add.add_task(1, 1) for _ in range(4))
    child.on_task_start(plain, None)
    child.on_task_end(plain)
    child.on_task_start(limited, 5.0)
    child.on_task_end(limited)
    child.on_task_start(cancelled, None)
    child.request_cancel({cancelled.uuid})
    child.on_task_end(cancelled)
    child.on_task_start(late, None)
    child.on_task_end(late)
    child.request_cancel({late.uuid})
    messages = []
    while heard.poll():
        messages.append(heard.recv())
    assert messages == [
        ("start", str(limited.uuid), 5.0),
        ("end", str(limited.uuid)),
        ("cancel", str(cancelled.uuid)),
        ("end", str(cancelled.uuid)),
    ]
