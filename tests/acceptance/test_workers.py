"""Real ``qtasks_worker`` processes on the test database: draining, signals, filters.

Every test starts workers through ``manage.py qtasks_worker`` (the ``worker_processes``
fixture) and watches the database and the worker's log; nothing waits on a bare sleep.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
import uuid as uuid_lib
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.db.models import Count

from django_qtasks import app
from django_qtasks.models import TaskRecord, TaskStatus
from tests.conftest import WorkerProcesses
from tests.helpers import wait_until
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)

FAST = ("--poll-interval", "0.05")
FIRST_SIGNAL = "SIGTERM: no new tasks"
SECOND_SIGNAL = "SIGTERM again: leaving now"


# -- helpers ------------------------------------------------------------------------------
def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for_log(path: Path, needle: str, timeout: float = 30) -> None:
    wait_until(lambda: needle in log_text(path), timeout=timeout,
               message=f"{needle!r} in the worker log {path}")


def exit_code(proc: subprocess.Popen[bytes], log: Path | None = None, timeout: float = 30) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        tail = log_text(log)[-2000:] if log else ""
        raise AssertionError(f"worker {proc.pid} still running after {timeout} s\n{tail}") from None


def statuses() -> dict[str, int]:
    rows = TaskRecord.objects.values("status").annotate(n=Count("uuid"))
    return {row["status"]: row["n"] for row in rows}


def executions(keys: Iterable[str]) -> dict[str, int]:
    """How many times each key ran (0 for never)."""
    counts = Counter(Execution.objects.values_list("key", flat=True))
    return {key: counts.get(key, 0) for key in keys}


def status_of(uuid: uuid_lib.UUID) -> str:
    return TaskRecord.objects.get(uuid=uuid).status


def wait_registered(procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    """Wait until every worker's heartbeat is in GlobalConfig (they claim right after)."""

    def registered() -> bool:
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, f"worker {proc.pid} died:\n{log_text(log)[-3000:]}"
        pids = {info.get("pid") for info in app.broker.live_workers().values()}
        return pids >= {proc.pid for proc in procs}

    wait_until(registered, message="the workers to register")


def drain_with_two_workers(
    worker_processes: WorkerProcesses, tmp_path: Path, count: int, workers: int = 2
) -> None:
    """Idle workers (two by default) see ``count`` tasks appear in one commit; each runs
    exactly once."""
    logs = [tmp_path / f"worker-{n}.log" for n in range(1, workers + 1)]
    procs = [worker_processes.start("--concurrency", "4", *FAST, log=log) for log in logs]
    wait_registered(procs, logs)

    keys = [f"k{n}" for n in range(count)]
    with transaction.atomic():
        for key in keys:
            app.add_task("tests.record", key)

    wait_until(
        lambda: statuses() == {"success": count},
        timeout=60,
        message=f"{count} tasks to succeed (now {statuses()})",
    )
    runs = executions(keys)
    assert {key: n for key, n in runs.items() if n != 1} == {}
    assert Execution.objects.count() == count
    ran_on = set(TaskRecord.objects.values_list("worker_id", flat=True))
    if count >= 1000 and workers == 2:  # with few tasks, one worker may take them all
        assert len(ran_on) == 2, f"both workers should have run tasks, saw {ran_on}"
    assert set(TaskRecord.objects.values_list("attempt", flat=True)) == {1}

    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    exits = [exit_code(proc, log) for proc, log in zip(procs, logs, strict=True)]
    assert exits == [0] * workers


# -- many tasks, two processes -------------------------------------------------------------
@pytest.mark.postgres
def test_two_worker_processes_run_2000_tasks_exactly_once_on_postgres(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    drain_with_two_workers(worker_processes, tmp_path, 2_000)


@pytest.mark.mysql
@pytest.mark.parametrize("workers", [2, 4])
def test_worker_processes_on_mariadb_run_1000_tasks_exactly_once(
    worker_processes: WorkerProcesses, tmp_path: Path, workers: int
) -> None:
    """SKIP LOCKED claims on InnoDB under READ COMMITTED, two and four processes at
    once: no task runs twice, none is left (deadlocks, if any, are retried)."""
    drain_with_two_workers(worker_processes, tmp_path, 1_000, workers=workers)


def test_two_worker_processes_run_300_tasks_exactly_once(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    """On SQLite this is the write-lock fallback (no SKIP LOCKED) at work."""
    drain_with_two_workers(worker_processes, tmp_path, 300)


# -- signals --------------------------------------------------------------------------------
def test_sigterm_lets_the_running_task_finish_and_takes_no_new_one(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    running = app.add_task("tests.wait_for_file", "running", str(release)).uuid
    queued = app.add_task("tests.record", "queued", priority=-1).uuid
    log = tmp_path / "worker.log"
    proc = worker_processes.start("--concurrency", "1", "--grace", "30", *FAST, log=log)

    wait_until(lambda: Execution.objects.filter(key="running").exists(), message="task start")
    proc.send_signal(signal.SIGTERM)
    wait_for_log(log, FIRST_SIGNAL)  # the worker has stopped claiming
    release.touch()

    assert exit_code(proc, log) == 0
    assert status_of(running) == TaskStatus.SUCCESS
    assert Execution.objects.get(key="running").finished > 0
    assert status_of(queued) == TaskStatus.NEW
    assert executions(["queued"]) == {"queued": 0}
    assert TaskRecord.objects.get(uuid=queued).attempt == 0


def test_a_second_sigterm_leaves_at_once_and_hands_the_task_back(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    running = app.add_task("tests.wait_for_file", "long", str(release), 60).uuid
    log = tmp_path / "worker.log"
    proc = worker_processes.start("--concurrency", "1", "--grace", "60", *FAST, log=log)

    wait_until(lambda: Execution.objects.filter(key="long").exists(), message="task start")
    proc.send_signal(signal.SIGTERM)
    wait_for_log(log, FIRST_SIGNAL)
    forced_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)

    # The grace is 60 s and the task would run 60 s: leaving within 5 s is "at once"
    # (observed: about 1.2 s, most of it ThreadWorker.stop() joining the busy thread).
    code = exit_code(proc, log, timeout=5)
    assert time.monotonic() - forced_at < 5
    assert code == 1  # Starter.run(): 1 = tasks were left unfinished
    assert SECOND_SIGNAL in log_text(log)
    assert Execution.objects.get(key="long").finished == 0  # the task really was cut off

    # The leaving worker hands its task back, without spending the attempt.
    row = TaskRecord.objects.get(uuid=running)
    assert (row.status, row.attempt, row.finished_at) == ("retry", 0, None), log_text(log)
    assert [(e["type"], e["message"], e["attempt"]) for e in row.errors] == [
        (
            "django_qtasks.exceptions.WorkerLost",
            "Task lost: its worker left before it finished. Rescued: back to the queue "
            "without spending an attempt.",
            1,
        )
    ]

    # At-least-once: another worker runs it again, to the end.
    release.touch()
    again = tmp_path / "again.log"
    assert exit_code(worker_processes.start("--burst", *FAST, log=again), again) == 0
    row.refresh_from_db()
    assert (row.status, row.attempt) == ("success", 1)
    assert Execution.objects.filter(key="long").count() == 2


# -- what a worker takes ---------------------------------------------------------------------
def test_a_worker_started_with_queues_a_leaves_queue_b_alone(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    mine = [app.add_task("tests.record", f"a{n}", queue="a").uuid for n in range(3)]
    other = app.add_task("tests.record", "b0", queue="b", priority=100).uuid
    log = tmp_path / "worker.log"
    proc = worker_processes.start("--queues", "a", "--burst", *FAST, log=log)

    assert exit_code(proc, log) == 0
    assert [status_of(uuid) for uuid in mine] == ["success"] * 3
    assert status_of(other) == TaskStatus.NEW
    assert executions(["a0", "a1", "a2", "b0"]) == {"a0": 1, "a1": 1, "a2": 1, "b0": 0}


def test_an_unregistered_task_name_ends_in_error_and_the_worker_goes_on(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    unknown = app.add_task("tests.nobody_registered_this", 1, priority=10).uuid
    after = app.add_task("tests.record", "after").uuid
    log = tmp_path / "worker.log"
    proc = worker_processes.start("--concurrency", "1", "--burst", *FAST, log=log)

    assert exit_code(proc, log) == 0
    failed = TaskRecord.objects.get(uuid=unknown)
    assert failed.status == TaskStatus.ERROR
    assert failed.finished_at is not None
    assert len(failed.errors) == 1
    error = failed.errors[0]
    assert error["type"] == "django_qtasks.exceptions.TaskNotRegistered"
    assert "No task named 'tests.nobody_registered_this' is registered" in error["message"]
    assert "tests.nobody_registered_this" in log_text(log)
    assert status_of(after) == TaskStatus.SUCCESS
    assert executions(["after"]) == {"after": 1}


@pytest.mark.parametrize("itself", [False, True], ids=["str_raises_other", "str_raises_itself"])
def test_an_exception_whose_str_raises_ends_in_error_and_the_burst_worker_exits(
    worker_processes: WorkerProcesses, tmp_path: Path, itself: bool
) -> None:
    """One thread: the task after it runs only if describing the exception did not end
    the thread, and the burst worker exits only if the task got its outcome."""
    bad = app.add_task("tests.raise_unprintable", "bad", itself, priority=10).uuid
    after = app.add_task("tests.record", "after").uuid
    log = tmp_path / "worker.log"
    proc = worker_processes.start("--concurrency", "1", "--burst", *FAST, log=log)

    assert exit_code(proc, log) == 0
    row = TaskRecord.objects.get(uuid=bad)
    name = "StrRaisesItself" if itself else "StrRaises"
    assert row.status == TaskStatus.ERROR
    # retry=1: the retry policy ran, and each attempt names the task's own exception.
    assert executions(["bad", "after"]) == {"bad": 2, "after": 1}
    assert [error["type"] for error in row.errors] == [f"tests.testapp.tasks.{name}"] * 2
    assert [error["message"] for error in row.errors] == [f"<{name}: str() failed>"] * 2
    assert "raise_unprintable" in row.traceback
    assert status_of(after) == TaskStatus.SUCCESS


# -- SQLite -------------------------------------------------------------------------------
def test_a_worker_starting_while_another_sqlite_writer_holds_the_lock_waits_for_it(
    run_worker: Callable[..., int]
) -> None:
    """Another connection writing when a worker starts must not kill the worker.

    In process, so that the timing is exact: the other writer holds SQLite's write lock
    for 0.5 s (its "work") while the worker starts; the busy timeout (30 s) covers it.
    """
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's database-wide write lock")
    task = app.add_task("tests.record", "after-the-lock").uuid
    other = sqlite3.connect(
        connection.settings_dict["NAME"], isolation_level=None, check_same_thread=False
    )
    other.execute("BEGIN IMMEDIATE")
    finish_writing = threading.Timer(0.5, other.rollback)
    started = time.monotonic()
    finish_writing.start()
    try:
        assert run_worker(concurrency=1) == 0
    finally:
        finish_writing.join()
        other.close()
    assert time.monotonic() - started >= 0.45  # it did meet the lock, and waited
    assert status_of(task) == TaskStatus.SUCCESS
