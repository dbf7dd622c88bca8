"""The Prometheus view: gauges read live, counters and histograms from what real workers
counted, kept when a worker dies, behind an optional bearer token."""

from __future__ import annotations

import datetime as dt
import importlib
import signal
import sys
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, override_settings
from django.urls import path
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from django_qtasks import app
from django_qtasks.contrib.metrics import metrics_view
from django_qtasks.global_config.counters import METRICS, RETIRED
from django_qtasks.models import ConfigEntry
from django_qtasks.storage.interface import WORKERS
from tests.conftest import WorkerProcesses
from tests.helpers import wait_until
from tests.testapp.tasks import add, always_fail, record

urlpatterns = [path("metrics", metrics_view)]

pytestmark = [pytest.mark.urls(__name__)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: Client | None = None, **headers: Any) -> Samples:
    response = (client or Client()).get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.django_db(transaction=True)
def test_a_scrape_shows_what_a_worker_ran(run_worker):
    for n in range(3):
        add.add_task(n, 1)
    for n in range(2):
        always_fail.add_task(f"f{n}")  # retry=1: a retry, then an error
    record.add_task("late", run_after=dt.timedelta(hours=1))  # waits: not due
    record.add_task("waited", run_after=timezone.now() - dt.timedelta(seconds=30))

    assert run_worker() == 0
    samples = scrape()

    finished = "qtasks_tasks_finished_total"
    assert value(samples, finished, queue="default", task_name=add.name, status="success") == 3
    fail = {"queue": "default", "task_name": always_fail.name}
    assert value(samples, finished, **fail, status="error") == 2
    assert value(samples, finished, **fail, status="success") == 0
    assert value(samples, "qtasks_tasks_retried_total", **fail) == 2
    duration = "qtasks_task_duration_seconds"
    assert value(samples, f"{duration}_count", **fail) == 4  # every attempt
    assert value(samples, f"{duration}_bucket", **fail, le="+Inf") == 4
    for bound in ("0.005", "1.0", "3600.0"):  # every series has every bound
        assert (f"{duration}_bucket", frozenset({**fail, "le": bound}.items())) in samples
    assert value(samples, f"{duration}_count", queue="default", task_name=add.name) == 3
    latency = {"queue": "default", "task_name": record.name}
    assert value(samples, "qtasks_task_latency_seconds_count", **latency) == 1
    assert value(samples, "qtasks_task_latency_seconds_sum", **latency) >= 30
    assert value(samples, "qtasks_task_latency_seconds_bucket", **latency, le="10.0") == 0
    assert value(samples, "qtasks_task_latency_seconds_bucket", **latency, le="60.0") == 1
    # Gauges are read live: the delayed task waits, nothing runs, the worker has left.
    assert value(samples, "qtasks_queue_waiting", queue="default") == 1
    assert value(samples, "qtasks_queue_ready", queue="default") == 0
    assert value(samples, "qtasks_queue_running", queue="default") == 0
    assert value(samples, "qtasks_workers_live") == 0
    # The worker folded its numbers into the retired totals when it left.
    assert set(ConfigEntry.objects.filter(name=METRICS).values_list("key", flat=True)) == {
        RETIRED
    }


@pytest.mark.django_db(transaction=True)
def test_counters_never_go_back_when_a_worker_dies(worker_processes: WorkerProcesses):
    proc = worker_processes.start("--poll-interval", "0.05")
    for n in range(4):
        add.add_task(n, n)
    always_fail.add_task("x")
    finished = "qtasks_tasks_finished_total"
    labels = {"queue": "default", "task_name": add.name, "status": "success"}

    # The worker flushes on its heartbeat (every 5 s here), while it runs.
    wait_until(
        lambda: value(scrape(), finished, **labels) == 4
        and value(scrape(), finished, queue="default", task_name=always_fail.name,
                  status="error") == 1,
        timeout=30,
        message="the worker's counts in the scrape",
    )  # fmt: skip
    before = scrape()
    assert value(before, "qtasks_workers_live") == 1
    assert ConfigEntry.objects.filter(name=METRICS).exclude(key=RETIRED).count() == 1

    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    ConfigEntry.objects.filter(name=WORKERS).update(expires_at=timezone.now())
    assert app.broker.forget_dead_workers() == 1

    after = scrape()
    assert value(after, "qtasks_workers_live") == 0
    for key, number in before.items():
        if key[0].startswith(("qtasks_tasks_", "qtasks_task_")):
            assert after.get(key) == number, key
    assert list(ConfigEntry.objects.filter(name=METRICS).values_list("key", flat=True)) == [
        RETIRED
    ]


@pytest.mark.django_db
def test_the_token_guards_the_view():
    with override_settings(QTASKS={"METRICS_TOKEN": "s3cret"}):
        client = Client()
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert refused["WWW-Authenticate"].startswith("Bearer")
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        samples = scrape(client, Authorization="Bearer s3cret")
        assert ("qtasks_workers_live", frozenset()) in samples


def test_a_missing_prometheus_client_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "django_qtasks.contrib.metrics")
    with pytest.raises(ImproperlyConfigured, match=r"pip install 'django-qtasks\[prometheus\]'"):
        importlib.import_module("django_qtasks.contrib.metrics")
