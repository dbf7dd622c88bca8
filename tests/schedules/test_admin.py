"""The dashboard's Schedules section: each schedule with its last and next run."""

from __future__ import annotations

import datetime as dt

import pytest
from django.conf import settings
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from django_qtasks import app
from django_qtasks.models import ScheduleRun, TaskRecord

pytestmark = pytest.mark.django_db

DASHBOARD = reverse("admin:django_qtasks_taskrecord_dashboard")


def with_schedule(**schedule: object) -> override_settings:
    return override_settings(QTASKS={**settings.QTASKS, "SCHEDULE": schedule})


def test_the_dashboard_lists_schedules_with_last_and_next_run(admin_client):
    spec = {"task": "tests.record", "cron": "0 3 * * *", "tz": "Europe/Paris", "args": ["n"]}
    with with_schedule(nightly=spec, hourly={**spec, "cron": "0 * * * *"}):
        task = app.add_task("tests.record", "n")
        TaskRecord.objects.filter(uuid=task.uuid).update(status="success")
        tick = timezone.now().replace(hour=2, minute=0, second=0, microsecond=0)
        ScheduleRun.objects.create(
            schedule="nightly", tick=tick, task_uuid=task.uuid, task_name="tests.record",
            enqueued_at=tick,
        )  # fmt: skip
        response = admin_client.get(DASHBOARD)

    assert response.status_code == 200
    rows = {row.name: row for row in response.context["schedules"]}
    assert set(rows) == {"nightly", "hourly"}
    nightly = rows["nightly"]
    assert (nightly.task_name, nightly.cron, nightly.tz) == (
        "tests.record",
        "0 3 * * *",
        "Europe/Paris",
    )
    assert (nightly.last_tick, nightly.last_status) == (tick, "success")
    assert timezone.now() < nightly.next_tick <= timezone.now() + dt.timedelta(days=1)
    assert rows["hourly"].last_tick is None
    html = response.content.decode()
    assert 'data-schedule="nightly"' in html
    assert reverse("admin:django_qtasks_taskrecord_change", args=[task.uuid]) in html
    assert "never" in html


def test_a_broken_schedule_is_shown_not_a_crash(admin_client):
    with with_schedule(broken={"task": "tests.nope", "cron": "0 3 * * *"}):
        response = admin_client.get(DASHBOARD)
    assert response.status_code == 200
    assert "tests.nope" in response.context["schedules_error"]
    assert "errornote" in response.content.decode()


def test_no_schedules_no_section(admin_client):
    response = admin_client.get(DASHBOARD)
    assert response.context["schedules"] == []
    assert 'id="qtasks-schedules"' not in response.content.decode()
