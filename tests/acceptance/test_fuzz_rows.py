"""Random and adversarial rows written straight into the task table, among good tasks:
a real ``qtasks_worker`` process runs every good task, ends or leaves alone each bad
row on its own, and never dies; the admin answers for every row.

Each run draws new rows; a failure prints its seed, and ``QTASKS_FUZZ_SEED=<seed>``
replays it. The rows are what a careless script, another program or another release
could write: JSON of any shape and depth, odd strings, integers at and past their
column's limits, names of tasks that exist, do not, or take other arguments, statuses
that are none of the queue's. What the database itself refuses is left out (PostgreSQL
and MariaDB refuse more than SQLite), so every database sees the rows it can hold.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from django_qtasks import app
from django_qtasks.models import TaskRecord, TaskStatus
from tests.acceptance.test_workers import exit_code, log_text
from tests.conftest import WorkerProcesses
from tests.rows import nested, written
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)

UTC = dt.timezone.utc  # dt.UTC is Python 3.11+
GOOD, BAD = 40, 80
ODD_TEXT = ["", "\x00", "\ud800", "a\nb", "'; DROP TABLE t; --", "é" * 300, "\\", "%s", "{",
            "null", "🙂", "x" * 5000, "default\n", "a/b", "\u202e"]  # fmt: skip
# Task names that exist (taking other arguments), do not, or could harm if imported;
# none that waits or sleeps, so the drain stays short whatever the arguments are.
NAMES = ["", "os.system", "builtins.eval", "tests.nobody", "x" * 255, "tests.raise_unprintable",
         "tests.bad_result", "tests.length", "tests.nul_result", "tests.echo", "tests.exit",
         "tests.testapp.tasks.add", "tests.record"]  # fmt: skip
INTEGERS = [-1, 0, 1, 2**15 - 1, -(2**15), 2**31 - 2, 2**31 - 1, 2**32, 2**63 - 1, -101, 101]
# Retry counts: a few, and past what a task may be defined with (1,000,000). Not tens of
# thousands: a task with retry_backoff=0 honours them, for hours.
RETRIES = [-1, 0, 1, 3, 1_000_001, 2**31 - 1, 2**32]
# Text in a time column is kept by SQLite alone, and then Django's ORM cannot read the
# row at all (its converter raises): the worker's claim fails such a row alone, but the
# admin and app.get() are Django's reads, so such rows are deleted before they look
# (docs/reliability.md, "Bad values").
BAD_TIMES = ["2000-13-45 00:00:00", "garbage"]


def json_value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value: scalars at their edges, containers, now and then deep ones."""
    kind = rng.randrange(8 if depth < 4 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([*INTEGERS, 10**30, -(10**30), rng.randrange(-(10**6), 10**6)])
    if kind == 2:
        return rng.choice([0.5, 1e308, -1e-308, 2.0**53 + 1])
    if kind == 3:
        return rng.choice(ODD_TEXT) + "".join(chr(rng.randrange(1, 0x3000)) for _ in range(3))
    if kind == 4:
        return json.loads(nested(rng.choice([29, 30, 31, 40, 200])))
    if kind == 5:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(ODD_TEXT): json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def json_text(rng: random.Random) -> tuple[str, bool]:
    """JSON text of any value, or text that is no JSON at all, or JSON nested 5,000 deep."""
    choice = rng.randrange(10)
    if choice == 0:
        return rng.choice(["not json", "[1,", "{'a': 1}", "NaN", ""]), True
    if choice == 1:
        return nested(5000), True
    return json.dumps(json_value(rng), ensure_ascii=rng.random() < 0.5), True


def timestamp(rng: random.Random) -> tuple[Any, bool]:
    return rng.choice([
        dt.datetime(1, 1, 1, tzinfo=UTC), dt.datetime(2000, 1, 1, tzinfo=UTC),
        dt.datetime(9999, 12, 31, tzinfo=UTC), *BAD_TIMES,
    ]), False  # fmt: skip


# Column -> a random value for it, and whether it is JSON text.
MUTATIONS: dict[str, Callable[[random.Random], tuple[Any, bool]]] = {
    "args": json_text,
    "kwargs": json_text,
    "returning": json_text,
    "errors": json_text,
    "progress": json_text,
    "tags": json_text,
    "attempt": lambda rng: (rng.choice(INTEGERS), False),
    "max_retries": lambda rng: (rng.choice(RETRIES), False),
    "rescues": lambda rng: (rng.choice(INTEGERS), False),
    "priority": lambda rng: (rng.choice([*INTEGERS, "high"]), False),
    "task_name": lambda rng: (rng.choice(NAMES), False),
    "queue": lambda rng: (rng.choice([*ODD_TEXT, "default", "mail"]), False),
    "status": lambda rng: (rng.choice(["paused", "", "NEW", "Success", *TaskStatus.values]), False),
    "worker_id": lambda rng: (rng.choice(ODD_TEXT), False),
    "run_after": timestamp,
    "created_at": timestamp,
    "started_at": timestamp,
    "cancel_requested": lambda rng: (rng.choice([True, False]), False),
    "unique_key": lambda rng: (rng.choice(ODD_TEXT), False),
    "flow_stage": lambda rng: (rng.choice(INTEGERS), False),
}


def write_bad_row(rng: random.Random) -> dict[str, Any]:
    """One task enqueued as usual, then 1 to 3 of its columns overwritten by hand;
    returns the columns the database took."""
    task = app.add_task("tests.testapp.tasks.add", rng.randrange(100), 1)
    taken = {}
    for column in rng.sample(sorted(MUTATIONS), rng.randrange(1, 4)):
        value, is_json = MUTATIONS[column](rng)
        if written(task.uuid, column, value, json=is_json):
            taken[column] = value
    return {"uuid": task.uuid, "columns": taken}


def test_a_worker_runs_the_good_tasks_among_random_bad_rows(
    worker_processes: WorkerProcesses, tmp_path: Path, admin_client
) -> None:
    seed = int(os.environ.get("QTASKS_FUZZ_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    replay = f"replay with QTASKS_FUZZ_SEED={seed}"
    print(replay)  # pytest shows it with any failure, the ones of the code under test too
    good = []
    bad = []
    for _ in range(GOOD + BAD):  # interleaved, so that batches mix them
        if (rng.random() < GOOD / (GOOD + BAD) and len(good) < GOOD) or len(bad) == BAD:
            good.append(tasks.add.add_task(rng.randrange(100), 1))
        else:
            bad.append(write_bad_row(rng))
    started = timezone.now()
    log = tmp_path / "worker.log"
    # The library's retry backoff, not the tests' 0: a burst worker leaves retries that
    # wait for it, so a row asking for many retries cannot keep it busy for good.
    worker_processes.env["QTASKS_TEST_SETTINGS"] = json.dumps({"DEFAULT_RETRY_BACKOFF": 2.0})
    proc = worker_processes.start("--burst", "--poll-interval", "0.05", log=log)

    assert exit_code(proc, log, timeout=60) == 0, replay
    assert "Exception in thread" not in log_text(log), replay
    for task in good:
        row = TaskRecord.objects.get(uuid=task.uuid)
        assert (row.status, row.returning) == ("success", task.args[0] + 1), replay
    # Nothing that was due when the worker started is left untouched in a queue it
    # serves (all of them), and nothing it claimed is left running: every row it could
    # take, it ran or failed alone.
    mine = f":{proc.pid}:"
    due = Q(status__in=[TaskStatus.NEW, TaskStatus.RETRY], run_after__lte=started)
    left = TaskRecord.objects.filter(
        due & Q(updated_at__lt=started) | Q(status=TaskStatus.PROCESS, worker_id__contains=mine)
    ).values_list("uuid", flat=True)
    assert not left, (replay, [b for b in bad if b["uuid"] in set(left)])
    unreadable = [b["uuid"] for b in bad if any(v in BAD_TIMES for v in b["columns"].values())]
    TaskRecord.objects.filter(uuid__in=unreadable).delete()
    for row in bad:
        if row["uuid"] in unreadable:
            continue
        assert app.get(row["uuid"]) is not None, replay  # the API reads every row back
        page = reverse("admin:django_qtasks_taskrecord_change", args=[row["uuid"]])
        assert admin_client.get(page).status_code == 200, (replay, row)
    for page in ("changelist", "dashboard"):
        response = admin_client.get(reverse(f"admin:django_qtasks_taskrecord_{page}"))
        assert response.status_code == 200, replay
