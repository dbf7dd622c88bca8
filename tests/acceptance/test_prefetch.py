"""Claiming ahead (``QTASKS["PREFETCH"]``) with real worker processes.

A worker of one thread is first taught that its tasks are short (it runs a few
quick ones), so that its next claim takes more rows than it has free threads. Then a
long task (it runs until the test creates a file) and five quick ones are enqueued in
one commit: the long one occupies the thread and the quick ones wait in the worker's
buffer, held by it (``process``, its worker id). What must hold for them: they go
to an idle worker instead of waiting behind the long task, a cancel ends them without
running them, a graceful shutdown hands them back at once, and the rescuer returns
them when the worker dies. No test waits on a bare sleep.
"""

from __future__ import annotations

import signal
import subprocess
import uuid as uuid_lib
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

from django_qtasks import app
from django_qtasks.models import TaskRecord, TaskStatus
from tests.acceptance.test_workers import FAST, executions, exit_code, log_text, wait_for_log
from tests.conftest import WorkerProcesses
from tests.helpers import wait_until
from tests.testapp.models import Execution

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

QUICK = [f"q{n}" for n in range(5)]
WAITING = {TaskStatus.NEW, TaskStatus.RETRY}


def holding_worker(
    worker_processes: WorkerProcesses, tmp_path: Path, *args: str
) -> tuple[subprocess.Popen[bytes], Path, str, list[uuid_lib.UUID]]:
    """A one-thread worker running the long task with the five quick ones claimed
    ahead; returns it, its log, its worker id and the quick tasks' uuids."""
    log = tmp_path / "holder.log"
    proc = worker_processes.start("--concurrency", "1", *FAST, *args, log=log)
    # Pure warm-up tasks: their mean duration stays far under the claim-ahead horizon
    # even on a loaded machine, so the claim below takes all five quick rows.
    warmup = [app.add_task("tests.length", f"w{n}").uuid for n in range(20)]
    wait_until(
        lambda: TaskRecord.objects.filter(uuid__in=warmup, status="success").count() == 20,
        message=f"the warm-up tasks to finish\n{log_text(log)[-2000:]}",
    )
    with transaction.atomic():
        long = app.add_task("tests.wait_for_file", "long", str(tmp_path / "release"), priority=10)
        quick = [app.add_task("tests.record", key).uuid for key in QUICK]
    wait_until(lambda: Execution.objects.filter(key="long").exists(), message="the long task")
    holder = TaskRecord.objects.get(uuid=long.uuid).worker_id
    rows = TaskRecord.objects.filter(uuid__in=quick)
    # One claim took them all: the quick ones wait in the buffer, held by this worker.
    assert set(rows.values_list("status", "worker_id", "attempt")) == {("process", holder, 1)}
    return proc, log, holder, quick


def test_rows_claimed_ahead_go_to_an_idle_worker_while_the_threads_are_busy(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    proc, log, holder, quick = holding_worker(worker_processes, tmp_path)
    other = worker_processes.start("--concurrency", "1", *FAST, log=tmp_path / "other.log")

    rows = TaskRecord.objects.filter(uuid__in=quick)
    wait_until(
        lambda: rows.filter(status="success").count() == len(quick),
        message=f"the idle worker to run the quick tasks\n{log_text(log)[-2000:]}",
    )
    assert not rows.filter(worker_id=holder).exists()  # all ran on the other worker
    assert set(rows.values_list("attempt", flat=True)) == {1}  # handing back spent none
    assert executions(QUICK) == dict.fromkeys(QUICK, 1)
    assert Execution.objects.get(key="long").finished == 0  # still running meanwhile

    (tmp_path / "release").touch()
    for worker in (proc, other):
        worker.send_signal(signal.SIGTERM)
        assert exit_code(worker) == 0


def test_a_cancelled_row_claimed_ahead_ends_cancelled_without_running(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    proc, log, _holder, quick = holding_worker(worker_processes, tmp_path)
    app.cancel(quick[0])

    wait_until(lambda: app.get(quick[0]).status == TaskStatus.CANCEL, message="the cancel")
    (tmp_path / "release").touch()
    wait_until(lambda: Execution.objects.filter(key="q1").exists(), message="the rest to run")
    assert executions(["q0"]) == {"q0": 0}
    assert app.get(quick[0]).status == TaskStatus.CANCEL
    proc.send_signal(signal.SIGTERM)
    assert exit_code(proc, log) == 0


def test_a_graceful_shutdown_hands_rows_claimed_ahead_back_at_once(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    proc, log, _holder, quick = holding_worker(worker_processes, tmp_path, "-v", "2")
    proc.send_signal(signal.SIGTERM)

    wait_for_log(log, "Handed back 5 claimed task(s) that had not started: the worker is stopping")
    rows = TaskRecord.objects.filter(uuid__in=quick)
    assert set(rows.values_list("status", "worker_id", "attempt")) == {("new", "", 0)}
    assert Execution.objects.get(key="long").finished == 0  # the running one goes on
    (tmp_path / "release").touch()
    assert exit_code(proc, log) == 0
    assert executions(QUICK) == dict.fromkeys(QUICK, 0)


def test_rows_claimed_ahead_by_a_dead_worker_are_rescued_and_run_elsewhere(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    # Plain tasks (no retries): the rescue of what a dead worker held spends no attempt.
    proc, _log, holder, quick = holding_worker(worker_processes, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # Its heartbeat expiring, as the rescuer would see it after HEARTBEAT_TIMEOUT.
    app.broker.forget_worker(holder)
    app.broker.storage.rescue()

    rows = TaskRecord.objects.filter(uuid__in=quick)
    assert set(rows.values_list("status", flat=True)) <= WAITING
    # Rescued together, they come back spread over 2 s; the burst worker below would
    # leave the ones not due yet.
    rows.update(run_after=timezone.now())
    (tmp_path / "release").touch()
    other = tmp_path / "other.log"
    assert exit_code(worker_processes.start("--burst", *FAST, log=other), other) == 0
    assert set(rows.values_list("status", "attempt", "rescues")) == {("success", 1, 1)}
    assert executions(QUICK) == dict.fromkeys(QUICK, 1)
