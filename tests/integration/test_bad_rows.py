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
