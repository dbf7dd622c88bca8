"""Rows that enqueueing would refuse, written straight into the table: the admin and
the dashboard answer for them instead of failing with a 500."""

from __future__ import annotations

import pytest
from django.db import connection
from django.urls import reverse

from django_qtasks import app
from django_qtasks.models import TaskRecord
from tests.testapp import tasks

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:django_qtasks_taskrecord_changelist")
DASHBOARD = reverse("admin:django_qtasks_taskrecord_dashboard")
CONFIG = reverse("admin:django_qtasks_configentry_changelist")


def set_column(task_uuid: object, column: str, value: object, *, json: bool = False) -> None:
    """Write a value the ORM and enqueueing would refuse (raw SQL, as a careless script
    or another program would)."""
    table = TaskRecord._meta.db_table
    cast = "CAST(%s AS jsonb)" if json and connection.vendor == "postgresql" else "%s"
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {column} = {cast} WHERE uuid = %s",
            [value, TaskRecord._meta.pk.get_db_prep_value(task_uuid, connection)],
        )


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


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_row_that_cannot_be_decoded_fails_alone_and_the_batch_runs(run_worker) -> None:
    """Arguments nested 5,000 deep or of the wrong JSON shape, written by hand: each such
    row ends error with a clear message, and the good tasks claimed with it run."""
    deep = "[" * 5000 + "]" * 5000
    bad = {}
    for column, value in [("args", deep), ("kwargs", deep), ("args", '{"a": 1}'),
                          ("args", '"text"'), ("kwargs", "[1]")]:  # fmt: skip
        task = tasks.add.add_task(1, 2)
        set_column(task.uuid, column, value, json=True)
        bad[task.uuid] = column
    good = [tasks.add.add_task(i, 1) for i in range(4)]
    assert run_worker(concurrency=8) == 0
    for task in good:
        assert TaskRecord.objects.get(uuid=task.uuid).returning == task.args[0] + 1
    for uuid in bad:
        row = TaskRecord.objects.only("status", "errors").get(uuid=uuid)
        assert row.status == "error"
        assert row.errors[-1]["type"] == "django_qtasks.exceptions.BadTaskRow"
        assert "cannot be run" in row.errors[-1]["message"]
