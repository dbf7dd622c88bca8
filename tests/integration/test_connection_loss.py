"""A task whose database connection the server cuts (terminated, restarting, the network
gone) lost its run to the environment: the run is rescued, its attempt unspent, and the
next task gets a fresh connection. Errors of the task's own making are not."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from django_qtasks import app
from django_qtasks.models import TaskRecord
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)
server_only = pytest.mark.skipif(
    connection.vendor == "sqlite", reason="SQLite has no connection a server could cut"
)
LOST = "Task lost: the database cut its worker's connection (OperationalError: "


def due_now(task) -> None:
    """Make a rescued task claimable at once (its short backoff is not what is tested)."""
    TaskRecord.objects.filter(uuid=task.uuid).update(run_after=timezone.now())


@server_only
def test_a_cut_connection_is_rescued_without_spending_the_attempt(run_worker, caplog):
    task = tasks.cut_once.add_task("c1")  # a plain task: no retries
    after = tasks.add.add_task(2, 2)
    with caplog.at_level(logging.INFO, logger="django_qtasks"):
        assert run_worker(concurrency=1) == 0
    row = TaskRecord.objects.get(uuid=task.uuid)
    assert (row.status, row.attempt, row.rescues) == ("retry", 0, 1)
    entry = row.errors[-1]
    assert (entry["type"], entry["attempt"]) == ("django_qtasks.exceptions.WorkerLost", 1)
    assert entry["message"].startswith(LOST), entry["message"]
    assert entry["message"].endswith("Rescued: back to the queue without spending an attempt.")
    # A short pause before the next run: the database may be restarting.
    assert timezone.now() < row.run_after < timezone.now() + dt.timedelta(seconds=2)
    # The same (only) thread ran the next task, on a fresh connection.
    assert app.get(after.uuid).returning == 4
    [rescue] = [r for r in caplog.records if getattr(r, "action", "") == "rescue"]
    assert rescue.levelno == logging.INFO  # the worker's outage line is the warning
    assert rescue.task_uuid == str(task.uuid)
    # The worker logs the cut once, naming its cause, and that the database answered
    # again (storing the rescue did).
    [down] = [r for r in caplog.records if getattr(r, "action", "") == "database_unreachable"]
    assert down.levelno == logging.WARNING
    assert down.getMessage().startswith("Database unreachable (OperationalError: "), (
        down.getMessage()
    )
    [up] = [r for r in caplog.records if getattr(r, "action", "") == "database_reachable"]
    assert up.levelno == logging.INFO
    assert up.getMessage().startswith("Database reachable again after ")
    # Its own run line is not logged as a failure of the task.
    assert not [
        r for r in caplog.records
        if getattr(r, "action", "") == "task_finished" and r.task_uuid == str(task.uuid)
    ]  # fmt: skip

    due_now(task)
    assert run_worker(concurrency=1) == 0
    done = app.get(task.uuid)
    assert (done.status, done.attempt, done.returning) == ("success", 1, 2)


@server_only
@override_settings(QTASKS={"MAX_RESCUES": 1})
def test_a_task_whose_connection_is_cut_every_time_ends_error_after_the_allowance(run_worker):
    task = tasks.cut_always.add_task("c2")
    for _ in range(2):
        assert run_worker(concurrency=1) == 0
        due_now(task)
    done = app.get(task.uuid)
    assert done.status == "error"
    message = done.errors[-1]["message"]
    assert message.startswith(
        "Task lost 2 times, more than QTASKS['MAX_RESCUES'] = 1 allows; the last time the "
        "database cut its worker's connection (OperationalError: "
    ), message
    assert TaskRecord.objects.get(uuid=task.uuid).rescues == 2


@pytest.mark.postgres
def test_a_statement_timeout_is_the_tasks_own_error(run_worker):
    task = tasks.statement_timeout.add_task()
    assert run_worker(concurrency=1) == 0
    done = app.get(task.uuid)
    assert done.status == "error"
    assert done.errors[-1]["type"] == "django.db.utils.OperationalError"
    assert TaskRecord.objects.get(uuid=task.uuid).rescues == 0


def test_an_operational_error_no_database_raised_is_the_tasks_own_error(run_worker):
    task = tasks.raise_operational_error.add_task()
    assert run_worker(concurrency=1) == 0
    done = app.get(task.uuid)
    assert (done.status, done.errors[-1]["type"]) == ("error", "django.db.utils.OperationalError")
    assert TaskRecord.objects.get(uuid=task.uuid).rescues == 0
