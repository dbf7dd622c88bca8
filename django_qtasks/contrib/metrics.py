"""Prometheus metrics: a view to add to ``urls.py``, and the collector behind it.

Needs ``prometheus-client`` (``pip install django-qtasks[prometheus]``). A scrape
never counts finished rows: the gauges come from the bounded reads of
:mod:`~django_qtasks.status` (the active rows' partial indexes and the worker
heartbeats), and the counters and histograms from what the workers counted
themselves (:mod:`~django_qtasks.counters`, a few GlobalConfig rows). So a scrape
costs the same with a thousand rows in the table or a hundred million.

The view is a plain Django view: restrict it (``QTASKS["METRICS_TOKEN"]``, a
staff-only wrapper, or the web server's IP allow-list); see docs/operations.md.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Iterator

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised by a test with the module hidden
    raise ImproperlyConfigured(
        "django_qtasks.metrics needs prometheus-client: pip install 'django-qtasks[prometheus]'"
    ) from exc

from django_qtasks.contrib.status import queue_status, worker_status
from django_qtasks.global_config import counters
from django_qtasks.settings import get_settings

FINAL_STATUSES = ("success", "error", "cancel")
"""The outcomes ``qtasks_tasks_finished_total`` counts; ``retry`` has a counter of its own."""


def _histogram(name: str, documentation: str, key: str, totals: counters.Totals) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=["queue", "task_name"])
    for queue, tasks in sorted(totals.items()):
        for task_name, series in sorted(tasks.items()):
            histogram = series.get(key)
            if not histogram:
                continue
            # Every series has every bound, so that sums across series stay right.
            per_bucket = {float(le): n for le, n in histogram.get("buckets", {}).items()}
            cumulative, buckets = 0, []
            for bound in sorted({*counters.BUCKETS, *per_bucket} - {math.inf}):
                cumulative += per_bucket.get(bound, 0)
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", histogram.get("count", 0)))
            family.add_metric([queue, task_name], buckets, histogram.get("sum", 0.0))
    return family


class QTasksCollector(Collector):
    """Reads the queue's metrics on each ``collect()`` (that is, on each scrape).

    Register it in a registry of your own to serve it from an existing endpoint:
    ``REGISTRY.register(QTasksCollector())``.
    """

    def describe(self) -> list[Metric]:
        # Nothing: registering must not query the database (it may not be ready yet).
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._gauges()
        yield from self._counters()

    def _gauges(self) -> Iterator[Metric]:
        queues, capped = queue_status()
        labels = ["queue"]
        waiting = GaugeMetricFamily(
            "qtasks_queue_waiting", "Tasks waiting (new or retry, due or not).", labels=labels
        )
        ready = GaugeMetricFamily("qtasks_queue_ready", "Waiting tasks due now.", labels=labels)
        running = GaugeMetricFamily("qtasks_queue_running", "Tasks running.", labels=labels)
        oldest = GaugeMetricFamily(
            "qtasks_queue_oldest_ready_age_seconds",
            "How long the oldest ready task has waited (0: none ready).",
            labels=labels,
        )
        paused = GaugeMetricFamily(
            "qtasks_queue_paused", "1 if the queue is paused.", labels=labels
        )
        for queue in queues:
            waiting.add_metric([queue.name], queue.waiting)
            ready.add_metric([queue.name], queue.ready)
            running.add_metric([queue.name], queue.running)
            oldest.add_metric([queue.name], queue.oldest_ready_age or 0.0)
            paused.add_metric([queue.name], 1 if queue.paused else 0)
        yield from (waiting, ready, running, oldest, paused)
        yield GaugeMetricFamily(
            "qtasks_queue_counts_capped",
            "1 if the backlog is larger than the rows one scrape reads: counts are lower bounds.",
            value=1 if capped else 0,
        )
        yield GaugeMetricFamily(
            "qtasks_workers_live",
            "Workers whose heartbeat has not expired.",
            value=sum(1 for worker in worker_status() if worker.alive),
        )

    def _counters(self) -> Iterator[Metric]:
        from django_qtasks import app

        totals = counters.totals(app.broker.storage.global_config)
        finished = CounterMetricFamily(
            "qtasks_tasks_finished",
            "Tasks that ended, by final status (success, error, cancel).",
            labels=["queue", "task_name", "status"],
        )
        retried = CounterMetricFamily(
            "qtasks_tasks_retried",
            "Failed attempts that were scheduled to run again.",
            labels=["queue", "task_name"],
        )
        for queue, tasks in sorted(totals.items()):
            for task_name, series in sorted(tasks.items()):
                for status in FINAL_STATUSES:
                    finished.add_metric([queue, task_name, status], series.get(status, 0))
                retried.add_metric([queue, task_name], series.get("retry", 0))
        yield finished
        yield retried
        yield _histogram(
            "qtasks_task_duration_seconds", "How long attempts ran.", "duration", totals
        )
        yield _histogram(
            "qtasks_task_latency_seconds",
            "How long tasks waited from due (run_after) to started.",
            "latency",
            totals,
        )


def _authorized(request: HttpRequest, token: str | None) -> bool:
    if token is None:
        return True
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET`` the metrics in Prometheus' text format. With ``QTASKS["METRICS_TOKEN"]``
    set, only for ``Authorization: Bearer <token>``."""
    if not _authorized(request, get_settings().metrics_token):
        response = HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="qtasks-metrics"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QTasksCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


__all__ = ["QTasksCollector", "metrics_view"]
