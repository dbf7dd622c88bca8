"""Four real worker processes run the scheduler together: one task per tick."""

from __future__ import annotations

import json

import pytest

from django_qtasks.models import ScheduleRun, TaskRecord
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(90)


def test_four_worker_processes_enqueue_each_tick_exactly_once(worker_processes, monkeypatch):
    schedule = {"every-second": {"task": "tests.record", "cron": "* * * * * *", "tz": "UTC",
                                 "args": ["tick"]}}  # fmt: skip
    monkeypatch.setenv("QTASKS_TEST_SCHEDULE", json.dumps(schedule))
    for _ in range(4):
        worker_processes.start("--concurrency", "1")
    runs = ScheduleRun.objects.filter(schedule="every-second")
    wait_until(lambda: runs.count() >= 4, timeout=60, message="four ticks")
    worker_processes.stop_all()

    ticks = list(runs.values_list("tick", flat=True))
    assert len(ticks) == len(set(ticks))
    tasks = TaskRecord.objects.filter(task_name="tests.record", args=["tick"])
    # Exactly one task per tick: as many tasks as ticks, each the task of its tick.
    assert tasks.count() == len(ticks)
    assert set(runs.values_list("task_uuid", flat=True)) == set(
        tasks.values_list("uuid", flat=True)
    )
    assert all(tick.microsecond == 0 for tick in ticks)
