"""GlobalConfig entries of the wrong shape (written by hand, by the admin before it
checked, or by an older version): each is logged and ignored, and the worker, the
dashboard, the config page, the metrics view and qtasks_status keep working."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from django.contrib import admin
from django.core.management import call_command
from django.test import Client
from django.urls import path, reverse

from django_qtasks import app
from django_qtasks.contrib.metrics import metrics_view
from django_qtasks.global_config.counters import METRICS
from django_qtasks.models import ConfigEntry, TaskRecord
from django_qtasks.storage.interface import QUEUES, WORKERS
from tests.testapp import tasks

urlpatterns = [path("admin/", admin.site.urls), path("metrics", metrics_view)]

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls(__name__)]

DASHBOARD = reverse("admin:django_qtasks_taskrecord_dashboard")
CONFIG = reverse("admin:django_qtasks_configentry_changelist")
CONFIG_ADD = reverse("admin:django_qtasks_configentry_add")

BAD_VALUES: list[Any] = [["paused"], "paused", 7, True, {"paused": "yes"}, {"paused": [1]}]
BAD_METRICS: list[Any] = [
    ["x"],
    "x",
    {"default": "x"},
    {"default": {"t": {"success": "many"}}},
    {"default": {"t": {"duration": {"buckets": {"0.5": [1]}}}}},
]


@pytest.fixture
def bad_entries() -> None:
    """A bad entry of every kind the queue reads, beside a good paused queue."""
    for i, value in enumerate(BAD_VALUES):
        ConfigEntry.objects.create(name=QUEUES, key=f"q{i}", value=value)
        ConfigEntry.objects.create(name=WORKERS, key=f"w{i}", value=value)
    ConfigEntry.objects.create(name=QUEUES, key="bad/name", value={"paused": True})
    ConfigEntry.objects.create(name=WORKERS, key="w-partial", value={"queues": 5, "pid": "x"})
    for i, value in enumerate(BAD_METRICS):
        ConfigEntry.objects.create(name=METRICS, key=f"m{i}", value=value)
    app.pause_queue("paused-for-real")


def test_bad_queue_flags_are_logged_and_ignored(
    bad_entries: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="django_qtasks"):
        assert app.paused_queues() == {"paused-for-real"}
    assert "q0" in caplog.text
    assert "'queues'" in caplog.text


def test_bad_worker_entries_are_left_out(bad_entries: None) -> None:
    """A heartbeat is any object whose "queues" is a list of names (or absent)."""
    assert set(app.live_workers()) == {"w4", "w5"}


def test_a_worker_starts_and_runs_tasks_despite_bad_entries(bad_entries: None, run_worker) -> None:
    task = tasks.add.add_task(1, 2)
    paused = tasks.add.add_task(3, 4, queue="paused-for-real")
    assert run_worker() == 0
    assert TaskRecord.objects.get(uuid=task.uuid).returning == 3
    assert TaskRecord.objects.get(uuid=paused.uuid).status == "new"


def test_the_pages_views_and_status_survive_bad_entries(bad_entries: None, admin_client) -> None:
    tasks.add.add_task(1, 2, queue="a.b")
    assert admin_client.get(DASHBOARD).status_code == 200
    assert admin_client.get(DASHBOARD, {"fragment": 1}).status_code == 200
    page = admin_client.get(CONFIG)
    assert page.status_code == 200
    assert b"paused-for-real" in page.content
    assert Client().get("/metrics").status_code == 200
    out = io.StringIO()
    call_command("qtasks_status", "--json", stdout=out)
    status = json.loads(out.getvalue())
    assert [q["name"] for q in status["queues"] if q["paused"]] == ["paused-for-real"]


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("default", '["paused"]', "must be an object"),
        ("default", '{"paused": "yes"}', "paused"),
        ("default", '{"paused": true, "since": 5}', "since"),
        ("bad/name", '{"paused": true}', "queue"),
    ],
)
def test_the_admin_form_refuses_a_queue_flag_of_the_wrong_shape(
    admin_client: Client, key: str, value: str, error: str
) -> None:
    response = admin_client.post(CONFIG_ADD, {"name": QUEUES, "key": key, "value": value})
    assert response.status_code == 200  # the form again, with its error
    assert error in response.content.decode()
    assert not ConfigEntry.objects.filter(name=QUEUES).exists()


def test_the_admin_form_takes_a_good_queue_flag(admin_client: Client) -> None:
    value = '{"paused": true, "since": "2026-01-01T00:00:00+00:00"}'
    response = admin_client.post(CONFIG_ADD, {"name": QUEUES, "key": "mail", "value": value})
    assert response.status_code == 302
    assert app.paused_queues() == {"mail"}
