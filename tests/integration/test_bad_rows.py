"""Rows that enqueueing would refuse, written straight into the table: the admin and
the dashboard answer for them instead of failing with a 500."""

from __future__ import annotations

import datetime as dt
import json as json_lib
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from django_qtasks import app
from django_qtasks.api.options import MAX_DEPTH
from django_qtasks.models import TaskRecord
from django_qtasks.storage.rows import MAX_ATTEMPT
from tests.rows import nested, set_column, written
from tests.testapp import tasks

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:django_qtasks_taskrecord_changelist")
DASHBOARD = reverse("admin:django_qtasks_taskrecord_dashboard")
CONFIG = reverse("admin:django_qtasks_configentry_changelist")


@pytest.mark.parametrize("param", ["queue", "task_name", "status__exact", "q"])
def test_a_filter_with_nul_is_a_400_not_a_500(admin_client, param: str) -> None:
    tasks.record.add_task("x")
    assert admin_client.get(CHANGELIST, {param: "a\x00b"}).status_code == 400
    assert admin_client.get(CONFIG, {"name": "a\x00b"}).status_code == 400
    assert admin_client.get(CHANGELIST, {param: "ab"}).status_code == 200


def test_the_dashboard_shows_a_queue_whose_name_cannot_be_paused(admin_client) -> None:
    task = tasks.record.add_task("x")
    set_column(task.uuid, "queue", "a/b")
    for page in (DASHBOARD, CONFIG):
        response = admin_client.get(page)
        assert response.status_code == 200
        assert b"a/b" in response.content
    assert app.get(task.uuid) is not None


@pytest.mark.django_db(transaction=True)
def test_a_row_in_an_unknown_status_is_left_alone_and_shown(admin_client, run_worker) -> None:
    """No worker claims, rescues or prunes a status it does not know; the dashboard
    shows it on a card of its own whose link lists exactly those rows."""
    odd, old = tasks.add.add_task(1, 2), tasks.add.add_task(0, 0)
    good = tasks.add.add_task(2, 2)
    assert run_worker() == 0
    set_column(odd.uuid, "status", "paused")
    for task in (odd, old):  # both finished long ago, as far as the columns tell
        for column in ("run_after", "created_at", "updated_at", "finished_at"):
            set_column(task.uuid, column, dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))
    assert run_worker() == 0
    call_command("qtasks_prune", "--older-than", "1d", stdout=StringIO())
    assert not TaskRecord.objects.filter(uuid=old.uuid).exists()
    assert TaskRecord.objects.get(uuid=good.uuid).returning == 4
    row = TaskRecord.objects.get(uuid=odd.uuid)
    assert (row.status, row.attempt, row.returning) == ("paused", 1, 3)
    page = admin_client.get(DASHBOARD).content.decode()
    assert "unknown status paused" in page
    listed = admin_client.get(CHANGELIST, {"status__exact": "paused"})
    assert listed.status_code == 200
    assert str(odd.uuid) in listed.content.decode()
    assert str(good.uuid) not in listed.content.decode()


# Rows enqueueing would refuse: (column, value, whether JSON).
BAD_ROWS: list[tuple[str, object, bool]] = [
    ("args", "[" * 5000 + "]" * 5000, True),  # past the decoder
    ("kwargs", "[" * 5000 + "]" * 5000, True),
    ("args", "[" + nested(MAX_DEPTH + 1) + "]", True),  # an argument past the limit
    ("args", '{"a": 1}', True),
    ("args", '"text"', True),
    ("kwargs", "[1]", True),
    ("args", "not json", True),
    ("attempt", MAX_ATTEMPT, False),  # the claim would overflow it
    ("max_retries", MAX_ATTEMPT, False),  # retried for good
    ("priority", "high", False),  # SQLite keeps text in an integer column
    ("run_after", "2000-13-45 00:00:00", False),  # ... and a time that is none
]


@pytest.mark.django_db(transaction=True)
def test_a_row_that_cannot_be_decoded_fails_alone_and_the_batch_runs(run_worker) -> None:
    """Arguments nested 5,000 deep, past the limit or of the wrong JSON shape, text
    that is not JSON, an attempt at its column's limit, values of the wrong type in
    SQLite's loosely typed columns, written by hand: each such row
    ends error with a clear message, and the good tasks claimed with it run (on every
    database: the PostgreSQL claim and the one of SQLite and MariaDB)."""
    bad = {}
    for column, value, is_json in BAD_ROWS:
        task = tasks.add.add_task(1, 2)
        if written(task.uuid, column, value, json=is_json):
            bad[task.uuid] = column
        else:
            TaskRecord.objects.filter(uuid=task.uuid).delete()
    assert len(bad) >= 4  # every database keeps half of them at least
    # The deepest argument enqueueing allows runs on every database.
    deepest = app.add_task("tests.record", json_lib.loads(nested(MAX_DEPTH)))
    good = [tasks.add.add_task(i, 1) for i in range(4)]
    assert run_worker(concurrency=16) == 0
    for task in good:
        assert TaskRecord.objects.get(uuid=task.uuid).returning == task.args[0] + 1
    assert TaskRecord.objects.get(uuid=deepest.uuid).status == "success"
    for uuid, column in bad.items():
        row = TaskRecord.objects.only("status", "errors").get(uuid=uuid)
        assert row.status == "error", column
        assert row.errors[-1]["type"] == "django_qtasks.exceptions.BadTaskRow"
        assert "cannot be run" in row.errors[-1]["message"]
        assert column in row.errors[-1]["message"]
