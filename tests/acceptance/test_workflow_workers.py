"""Chains and groups through real ``qtasks_worker`` processes: a flow outlives the worker
that ran its first step, and concurrent workers finishing a group's last members
release the next step exactly once."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import Count

from django_qtasks import chain, group
from django_qtasks.models import TaskRecord
from tests.acceptance.test_workers import FAST, FIRST_SIGNAL, exit_code, wait_for_log
from tests.conftest import WorkerProcesses
from tests.helpers import wait_until
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_chain_survives_a_worker_stopped_by_sigterm_between_its_steps(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    flow = chain(tasks.wait_for_file("step1", str(release)), tasks.length()).add_task()
    log = tmp_path / "first.log"
    first = worker_processes.start("--concurrency", "1", "--grace", "30", *FAST, log=log)
    wait_until(lambda: Execution.objects.filter(key="step1").exists(), message="step 1 to start")

    first.send_signal(signal.SIGTERM)  # finish the running step, take no new task
    wait_for_log(log, FIRST_SIGNAL)
    release.touch()
    assert exit_code(first, log) == 0
    step1, step2 = flow.refresh().tasks
    assert (step1.status, step1.returning) == ("success", "step1")
    assert (step2.status, step2.args, step2.attempt) == ("new", ["step1"], 0)

    worker_processes.start(*FAST, log=tmp_path / "second.log")
    final = flow.wait(timeout=30)
    assert (final.status, final.returning) == ("success", 5)


def test_a_chain_survives_a_worker_killed_between_its_steps(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    flow = chain(tasks.record("k1"), tasks.total_elsewhere("k2"), tasks.length()).add_task()
    first = worker_processes.start("--queues", "default", *FAST, log=tmp_path / "first.log")
    # Step 2 lives on a queue this worker does not serve: it is released, and waits.
    wait_until(
        lambda: [t.status for t in flow.refresh().tasks] == ["success", "new", "blocked"],
        message="step 1 to finish and release step 2",
    )
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=10) == -signal.SIGKILL

    worker_processes.start(*FAST, log=tmp_path / "second.log")
    final = flow.wait(timeout=30)
    assert (final.status, final.args, final.returning) == ("success", ["k2:k1"], 5)
    assert Execution.objects.filter(key__in=["k1", "k2"]).count() == 2


def drain_groups(worker_processes: WorkerProcesses, tmp_path: Path, count: int) -> None:
    """``count`` groups of three, each followed by a step summing their results, drained
    by two worker processes of four threads: the last members of a group often finish at
    the same moment in two workers, and exactly one of them must release the sum."""
    flows = [
        chain(group(tasks.add(n, 0), tasks.add(n, 1), tasks.add(n, 2)), tasks.total()).add_task()
        for n in range(count)
    ]
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    for log in logs:
        worker_processes.start("--concurrency", "4", *FAST, log=log)

    def done() -> bool:
        return TaskRecord.objects.filter(task_name="tests.total", status="success").count() == count

    wait_until(done, timeout=120, message="every group's sum to run")
    sums = dict(
        TaskRecord.objects.filter(task_name="tests.total").values_list("flow_id", "returning")
    )
    assert {flow.flow_id: sums[flow.flow_id] for flow in flows} == {
        flow.flow_id: 3 * n + 3 for n, flow in enumerate(flows)
    }
    assert statuses() == {"success": 4 * count}
    assert set(TaskRecord.objects.values_list("attempt", flat=True)) == {1}


def statuses() -> dict[str, int]:
    rows = TaskRecord.objects.values("status").annotate(n=Count("uuid"))
    return {row["status"]: row["n"] for row in rows}


@pytest.mark.postgres
def test_concurrent_workers_release_every_group_exactly_once_on_postgres(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    assert connection.vendor == "postgresql"
    drain_groups(worker_processes, tmp_path, 300)


def test_concurrent_workers_release_every_group_exactly_once(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    drain_groups(worker_processes, tmp_path, 60)


def test_a_chain_through_a_group_runs_on_a_process_pool_worker(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    flow = chain(tasks.add(1, 0), group(tasks.add(10), tasks.add(20)), tasks.total()).add_task()
    worker_processes.start("--processes", "2", *FAST, log=tmp_path / "pool.log")
    final = flow.wait(timeout=60)
    assert (final.status, final.args, final.returning) == ("success", [[11, 21]], 32)
