"""Concurrency limits under real ``qtasks_worker`` processes: three workers (two with
threads, one with a process pool) share each group's limit through the database.

Each task writes when it started and ended (``Execution``); the intervals of a group
may never overlap more than its limit allows.
"""

from __future__ import annotations

import signal
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import pytest
from django.db import transaction

from django_qtasks import app
from django_qtasks.models import TaskRecord
from tests.acceptance.test_workers import FAST, exit_code, statuses, wait_registered
from tests.conftest import WorkerProcesses
from tests.helpers import wait_until
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)

SECONDS = 0.05  # each task's work: long enough for claims to race while it runs


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals that overlap at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    now = peak = 0
    for _, step in events:  # at a tie an end (-1) sorts first: touching is not overlapping
        now += step
        peak = max(peak, now)
    return peak


def run_with_three_workers(
    worker_processes: WorkerProcesses, tmp_path: Path, calls: list[tuple[str, tuple[object, ...]]]
) -> dict[str, list[tuple[float, float]]]:
    """Start three workers, enqueue ``calls`` in one commit, wait until all succeeded;
    returns the run intervals by key prefix (the part of the key before "-")."""
    # One task at a time per worker (per child in the pool): any two tasks that run at
    # once ran in two workers, so every overlap checked below crossed workers, and no
    # single worker can take the whole batch on its own.
    options = [
        ("--concurrency", "1"),
        ("--concurrency", "1"),
        ("--processes", "2", "--concurrency", "1"),
    ]
    logs = [tmp_path / f"worker-{n}.log" for n in range(len(options))]
    procs = [
        worker_processes.start(*extra, *FAST, log=log)
        for extra, log in zip(options, logs, strict=True)
    ]
    wait_registered(procs[:2], logs[:2])  # a pool's heartbeats are its children's
    with transaction.atomic():
        for name, args in calls:
            app.add_task(name, *args)
    count = len(calls)
    wait_until(lambda: statuses() == {"success": count}, timeout=90,
               message=f"{count} tasks to succeed (now {statuses()})")  # fmt: skip
    # Handed-back claims were undone exactly: every task ran in one attempt.
    assert set(TaskRecord.objects.values_list("attempt", flat=True)) == {1}
    assert len(set(TaskRecord.objects.values_list("worker_id", flat=True))) >= 2
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    assert [exit_code(proc, log) for proc, log in zip(procs, logs, strict=True)] == [0, 0, 0]
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for key, started, finished in Execution.objects.values_list("key", "started", "finished"):
        assert finished >= started > 0
        groups[key.split("-")[0]].append((started, finished))
    assert sum(len(runs) for runs in groups.values()) == count  # each ran exactly once
    return groups


def test_max_concurrency_1_is_never_exceeded_by_three_workers(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    calls = [("tests.limited", (f"one-{n}", SECONDS)) for n in range(16)]
    calls += [("tests.record", (f"free-{n}",)) for n in range(16)]
    runs = run_with_three_workers(worker_processes, tmp_path, calls)
    one = sorted(runs["one"])
    assert all(a[1] <= b[0] for a, b in pairwise(one)), one
    assert most_at_once(one) == 1


def test_max_concurrency_2_runs_two_at_once_and_never_three(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    calls = [("tests.limited_two", (f"two-{n}", SECONDS * 2)) for n in range(16)]
    runs = run_with_three_workers(worker_processes, tmp_path, calls)
    assert most_at_once(runs["two"]) == 2


def test_per_key_limits_run_keys_in_parallel_and_each_key_alone(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    calls = [
        ("tests.limited_per_account", (account, f"a{account}-{n}", SECONDS * 2))
        for n in range(5)
        for account in (1, 2, 3)
    ]
    runs = run_with_three_workers(worker_processes, tmp_path, calls)
    assert {key: most_at_once(intervals) for key, intervals in runs.items()} == {
        "a1": 1, "a2": 1, "a3": 1
    }  # fmt: skip
    everything = [interval for intervals in runs.values() for interval in intervals]
    assert most_at_once(everything) >= 2, "different keys should have run side by side"
