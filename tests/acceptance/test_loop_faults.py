"""A plugged-in Broker whose calls fail with errors that are not the database's
(``tests/testapp/faulty.py``): the worker's claim loop, completer, heartbeat and
scheduler each survive the failed rounds, log them once, and lose no task.

Real ``qtasks_worker`` processes; the Broker is swapped through ``QTASKS["BROKER"]``,
and every call it lets through reaches the real Storage and database.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from django.db import transaction

from django_qtasks import app
from django_qtasks.models import ScheduleRun, TaskRecord
from tests.acceptance.test_real_faults import log_lines
from tests.acceptance.test_workers import FAST, executions, exit_code, wait_for_log
from tests.conftest import WorkerProcesses
from tests.faultkit import log_text
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

BEATS = {"HEARTBEAT_INTERVAL": 0.1, "HEARTBEAT_TIMEOUT": 5.0, "RESCUE_INTERVAL": 0.2}
SCHEDULE = {"every-second": {"task": "tests.record", "cron": "* * * * * *", "tz": "UTC",
                             "args": ["tick"]}}  # fmt: skip

# The failing calls, and the loop whose ERROR and recovery lines the worker logs.
CASES = {
    "claim": ({"claim": [0, 1, 2]}, "The claim loop", 3),
    # Storage committed the claim; the worker never heard of the rows it holds.
    "claim_after": ({"claim_after": [0]}, "The claim loop", 1),
    "finish_many": ({"finish_many": [0, 1]}, "Storing outcomes", 2),
    "heartbeat": ({"heartbeat": [1, 2, 3]}, "The heartbeat", 3),  # call 0 registers
    "add_scheduled": ({"add_scheduled": [0, 1]}, "The scheduler", 2),
}


def succeeded(keys: list[str]) -> set[str]:
    rows = TaskRecord.objects.filter(task_name="tests.record", status="success")
    return {args[0] for args in rows.values_list("args", flat=True)} & set(keys)


@pytest.mark.parametrize("case", list(CASES))
def test_a_loop_survives_failed_rounds_and_loses_no_task(
    worker_processes: WorkerProcesses, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    faults, loop, failures = CASES[case]
    worker_processes.env["QTASKS_TEST_SETTINGS"] = json.dumps(
        {"BROKER": "tests.testapp.faulty.FaultyBroker", **BEATS}
    )
    worker_processes.env["QTASKS_TEST_FAULTS"] = json.dumps(faults)
    if case == "add_scheduled":
        monkeypatch.setenv("QTASKS_TEST_SCHEDULE", json.dumps(SCHEDULE))
    keys = [f"k{n}" for n in range(20)]
    with transaction.atomic():
        for key in keys:
            app.add_task("tests.record", key)
    log = tmp_path / "worker.log"
    proc = worker_processes.start("--concurrency", "2", *FAST, log=log)

    def alive() -> bool:
        assert proc.poll() is None, f"the worker died:\n{log_text(log)[-3000:]}"
        return True

    wait_until(lambda: alive() and succeeded(keys) == set(keys), timeout=30,
               message=f"the tasks to succeed\n{log_text(log)[-3000:]}")  # fmt: skip
    wait_for_log(log, f"{loop} works again after {failures} failed round(s)")
    assert executions(keys) == dict.fromkeys(keys, 1)
    # One ERROR for the whole streak (with the traceback), not one per failed round.
    errors = log_lines(log, "ERROR")
    assert len(errors) == 1, errors
    assert f"{loop} failed (PluginBug: " in errors[0]
    assert "Traceback (most recent call last)" in log_text(log)

    # Every loop is still at work: a new task runs, the heartbeat moves, ticks come.
    after = app.add_task("tests.record", "after")
    wait_until(lambda: alive() and TaskRecord.objects.get(uuid=after.uuid).status == "success",
               message=f"a task enqueued after the faults\n{log_text(log)[-3000:]}")  # fmt: skip
    beat = app.broker.live_workers()
    [entry] = [info for info in beat.values() if info.get("pid") == proc.pid]
    wait_until(
        lambda: any(info.get("pid") == proc.pid and info["last_beat"] > entry["last_beat"]
                    for info in app.broker.live_workers().values()),
        message="a heartbeat after the faults",
    )  # fmt: skip
    if case == "add_scheduled":
        wait_until(lambda: ScheduleRun.objects.filter(schedule="every-second").exists(),
                   message=f"a scheduled tick\n{log_text(log)[-3000:]}")  # fmt: skip
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert exit_code(proc, log) == 0


def test_an_outcome_that_cannot_be_stored_has_its_run_handed_back(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    """Every try of the outcome's write fails: the run is rescued and runs again."""
    worker_processes.env["QTASKS_TEST_SETTINGS"] = json.dumps(
        {"BROKER": "tests.testapp.faulty.FaultyBroker", **BEATS}
    )
    worker_processes.env["QTASKS_TEST_FAULTS"] = json.dumps({"finish_many": [0, 1, 2]})
    task = app.add_task("tests.record", "once-more")
    log = tmp_path / "worker.log"
    proc = worker_processes.start("--concurrency", "1", "--burst", *FAST, log=log)

    assert exit_code(proc, log) == 0
    row = TaskRecord.objects.get(uuid=task.uuid)
    assert (row.status, row.rescues, row.attempt) == ("success", 1, 1)
    assert executions(["once-more"]) == {"once-more": 2}  # at-least-once
    assert row.errors[0]["message"].startswith(
        "Task lost: its worker could not store its outcome. Rescued"
    )
    assert len(log_lines(log, "ERROR")) == 1
    assert f"Task {task.uuid}: its outcome (success) could not be stored; the run was " \
        "handed back" in log_text(log)
