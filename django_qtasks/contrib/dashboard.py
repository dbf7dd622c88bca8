"""The admin dashboard: what the queue is doing now, read with bounded queries.

The task table grows without limit (finished rows stay until someone deletes them),
so nothing here counts or scans the whole of it. Each statistic reads through an
index and stops after a fixed number of rows (:data:`SCAN_CAP`); a number that hit
the cap is shown as "at least", and on PostgreSQL as the planner's estimate when the
table statistics know better. That keeps a page load in milliseconds with millions of
rows, at the price of exactness for the big finished piles, which nobody reads to the
unit anyway.

The page and its live fragment are plain Django views wrapped by the admin site
(``TaskRecordAdmin.get_urls``); the fragment is what the page's script re-fetches
every few seconds, so the numbers move without a full reload.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import django
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.functional import cached_property
from django.utils.translation import gettext as _

from django_qtasks.global_config.shapes import worker_fault
from django_qtasks.models import (
    WAITING_STATUSES,
    ConfigEntry,
    TaskRecord,
    TaskStatus,
)
from django_qtasks.settings import QUEUE_NAME_RE, get_settings
from django_qtasks.storage import reads

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

SCAN_CAP = 50_000
"""Rows one statistic reads at most; beyond it the number is a lower bound."""

LIST_COUNT_CAP = 10_000
"""Rows the admin list counts at most; past it, it says "more than" and stops paging."""

DISTINCT_CAP = 500
"""Distinct queues or task names listed at most (filters, search, the queues table)."""

UNKNOWN_STATUSES_CAP = 20
"""Statuses outside the seven that the dashboard and ``qtasks_status`` name at most."""

WORKERS_CAP = 200
"""Worker rows shown at most, newest heartbeat first."""

THROUGHPUT_MINUTES = 60

Kind = Literal["exact", "at_least", "about"]


def _alias() -> str:
    return get_settings().database


@dataclass(frozen=True)
class Amount:
    """A count that says how sure it is: exact, a lower bound, or an estimate."""

    value: int
    kind: Kind = "exact"

    def __str__(self) -> str:
        prefix = {"exact": "", "at_least": "≥ ", "about": "≈ "}[self.kind]
        return f"{prefix}{self.value:,}"


# -- counting without COUNT(*) over the table ----------------------------------------------
def capped_count(queryset: QuerySet[Any], cap: int) -> Amount:
    """Count at most ``cap`` rows: ``SELECT COUNT(*) FROM (... LIMIT cap + 1)``."""
    return _capped(queryset.order_by()[: cap + 1].count(), cap)


def _capped(n: int, cap: int) -> Amount:
    """A count read up to ``cap + 1`` rows, as the Amount it is."""
    return Amount(cap, "at_least") if n > cap else Amount(n)


def estimated_rows(alias: str | None = None) -> int | None:
    """PostgreSQL's estimate of the task table's size (:func:`.reads.estimated_rows`)."""
    return reads.estimated_rows(alias or _alias())


def estimated_status_rows(alias: str | None = None) -> dict[str, int]:
    """Status -> estimated rows (:func:`.reads.estimated_status_rows`)."""
    return reads.estimated_status_rows(alias or _alias())


class EstimatedCountPaginator(Paginator):  # type: ignore[type-arg]
    """The admin list's paginator: it never runs ``COUNT(*)`` over the whole table.

    Unfiltered on PostgreSQL it takes the planner's estimate; otherwise it counts up to
    :data:`LIST_COUNT_CAP`. Pages stop at the cap too, so no page asks the database to
    skip a million rows (``OFFSET``) to show a hundred: filters narrow the list instead.
    """

    is_estimate = False
    is_capped = False

    @cached_property
    def count(self) -> int:
        queryset: QuerySet[Any] = self.object_list  # type: ignore[assignment]
        if not queryset.query.where:
            estimate = estimated_rows(queryset.db)
            if estimate is not None and estimate > LIST_COUNT_CAP:
                self.is_estimate = True
                return estimate
        amount = capped_count(queryset, LIST_COUNT_CAP)
        self.is_capped = amount.kind != "exact"
        return amount.value + (1 if self.is_capped else 0)

    @cached_property
    def num_pages(self) -> int:
        pages = super().num_pages
        return min(pages, max(1, math.ceil(LIST_COUNT_CAP / self.per_page)))


# -- distinct values by skipping through an index ------------------------------------------
def distinct_values(column: Literal["queue", "task_name"], limit: int = DISTINCT_CAP) -> list[str]:
    """The distinct values of ``column``, in order, at most ``limit`` of them, by a loose
    index scan (:func:`.reads.distinct_values`)."""
    return reads.distinct_values(_alias(), column, limit)


# -- the statistics ------------------------------------------------------------------------
def status_counts() -> dict[str, Amount]:
    """Status -> rows in it, each count capped; capped ones become estimates on PostgreSQL.

    Each count reads the ``(status, created_at)`` index for one status, and stops at
    :data:`SCAN_CAP`, so one bounded index read per status instead of a table scan.
    """
    cap, alias = SCAN_CAP, _alias()
    counts = {s.value: _capped(reads.capped_status_count(alias, s, cap), cap) for s in TaskStatus}
    if any(amount.kind != "exact" for amount in counts.values()):
        estimates = estimated_status_rows()
        for status, amount in counts.items():
            if amount.kind != "exact" and estimates.get(status, 0) > amount.value:
                counts[status] = Amount(estimates[status], "about")
    return counts


def unknown_statuses() -> dict[str, Amount]:
    """Statuses that are none of the seven -> rows in each, capped
    (:func:`.reads.unknown_statuses`): rows no worker runs and no pruning deletes, which
    only a person can fix."""
    cap = SCAN_CAP
    found = reads.unknown_statuses(_alias(), cap, UNKNOWN_STATUSES_CAP)
    return {status: _capped(n, cap) for status, n in found.items()}


@dataclass
class QueueRow:
    """One queue as the dashboard shows it."""

    name: str
    waiting: int = 0
    ready: int = 0
    running: int = 0
    oldest_ready: dt.datetime | None = None
    paused: bool = False
    now: dt.datetime = field(default_factory=timezone.now)

    @property
    def pausable(self) -> bool:
        """Only a valid queue name can be paused (and put in the pause button's URL); a
        row written by hand may hold any other (``a/b``)."""
        return bool(QUEUE_NAME_RE.match(self.name))

    @property
    def oldest_age(self) -> dt.timedelta | None:
        """How long the oldest ready task has waited for a worker: the queue's latency."""
        return None if self.oldest_ready is None else max(self.now - self.oldest_ready, _ZERO)


_ZERO = dt.timedelta(0)


def _as_datetime(value: Any) -> dt.datetime | None:
    """A datetime read by raw SQL (SQLite gives text, MariaDB a naive UTC datetime) as
    an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.timezone.utc) if timezone.is_naive(value) else value
    parsed = parse_datetime(str(value))
    if parsed is not None and timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed


def queue_stats(now: dt.datetime | None = None) -> tuple[list[QueueRow], bool]:
    """Queues with waiting or running tasks, plus paused ones; and whether the scan was
    capped (a backlog bigger than :data:`SCAN_CAP` rows shows lower bounds).

    One statement over the active rows only (the partial indexes' rows), at most
    :data:`SCAN_CAP` of them; finished rows are never read.
    """
    now = now or timezone.now()
    waiting = {s.value for s in WAITING_STATUSES}
    rows = reads.active_queue_rows(_alias(), now, SCAN_CAP)
    queues: dict[str, QueueRow] = {}
    scanned = 0
    for name, status, count, ready, oldest in rows:
        row = queues.setdefault(name, QueueRow(name, now=now))
        scanned += count
        if status in waiting:
            row.waiting += count
            row.ready += int(ready or 0)
            oldest = _as_datetime(oldest)
            if oldest is not None and (row.oldest_ready is None or oldest < row.oldest_ready):
                row.oldest_ready = oldest
        else:
            row.running += count
    from django_qtasks import app

    for name in app.paused_queues():
        queues.setdefault(name, QueueRow(name, now=now)).paused = True
    return sorted(queues.values(), key=lambda q: q.name)[:DISTINCT_CAP], scanned >= SCAN_CAP


@dataclass
class Throughput:
    """Finished tasks per minute over the last hour, and the SVG chart's geometry."""

    buckets: list[tuple[dt.datetime, int, int]]  # (minute, finished, failed)
    width: int = 1000
    height: int = 140

    @property
    def finished(self) -> int:
        return sum(b[1] for b in self.buckets)

    @property
    def failed(self) -> int:
        return sum(b[2] for b in self.buckets)

    @property
    def peak(self) -> int:
        return max((b[1] for b in self.buckets), default=0)

    @property
    def failure_rate(self) -> float | None:
        """Failed / finished over the hour (cancelled tasks count as finished, not failed)."""
        return None if not self.finished else self.failed / self.finished

    @property
    def failure_percent(self) -> float | None:
        rate = self.failure_rate
        return None if rate is None else rate * 100

    @property
    def per_minute(self) -> float:
        return self.finished / THROUGHPUT_MINUTES

    def bars(self) -> list[dict[str, Any]]:
        """One bar per minute, oldest left; the failed part is drawn on top in red."""
        step = self.width / len(self.buckets)
        scale = (self.height - 4) / self.peak if self.peak else 0
        bars = []
        for i, (minute, finished, failed) in enumerate(self.buckets):
            h = finished * scale
            fh = failed * scale
            bars.append(
                {
                    "x": round(i * step + 0.5, 1),
                    "w": round(max(step - 1, 1), 1),
                    "y": round(self.height - h, 1),
                    "h": round(h, 1),
                    "fy": round(self.height - h, 1),
                    "fh": round(fh, 1),
                    "label": f"{minute:%H:%M} UTC: {finished} finished, {failed} failed",
                }
            )
        return bars


def throughput(now: dt.datetime | None = None) -> Throughput:
    """Tasks finished per minute in the last hour: one grouped range read of the
    ``finished_at`` partial index (finished rows only, the last hour only)."""
    now = now or timezone.now()
    end = now.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    start = end - dt.timedelta(minutes=THROUGHPUT_MINUTES)
    per_minute = reads.finished_per_minute(_alias(), start)
    buckets = []
    for i in range(THROUGHPUT_MINUTES):
        minute = start + dt.timedelta(minutes=i)
        finished, failed = per_minute.get(minute, (0, 0))
        buckets.append((minute, finished, failed))
    return Throughput(buckets)


@dataclass
class WorkerRow:
    """A worker's last heartbeat, as the admin shows it."""

    worker_id: str
    info: dict[str, Any]
    expires_at: dt.datetime | None
    updated_at: dt.datetime
    now: dt.datetime

    @property
    def alive(self) -> bool:
        return self.expires_at is None or self.expires_at > self.now

    @property
    def last_beat(self) -> dt.datetime:
        beat = _as_datetime(self.info.get("last_beat"))
        return beat or self.updated_at

    @property
    def age(self) -> dt.timedelta:
        return max(self.now - self.last_beat, _ZERO)

    @property
    def queues(self) -> str:
        queues = self.info.get("queues")
        return ", ".join(queues) if queues else _("all")

    # Straight from the heartbeat (see Heartbeat.beat); "" when a worker did not say.
    @property
    def host(self) -> Any:
        return self.info.get("host", "")

    @property
    def pid(self) -> Any:
        return self.info.get("pid", "")

    @property
    def concurrency(self) -> Any:
        return self.info.get("concurrency", "")

    @property
    def running(self) -> Any:
        return self.info.get("running", "")


def workers(now: dt.datetime | None = None, worker_id: str | None = None) -> list[WorkerRow]:
    """Worker heartbeats from GlobalConfig, newest first, expired ones included (a worker
    that died without saying goodbye shows as expired until its row is deleted)."""
    now = now or timezone.now()
    return [
        WorkerRow(
            e.key,
            e.value if isinstance(e.value, dict) and not worker_fault(e.key, e.value) else {},
            e.expires_at,
            e.updated_at,
            now,
        )
        for e in reads.heartbeats(_alias(), WORKERS_CAP, worker_id)
    ]


# -- schedules (periodic tasks) --------------------------------------------------------------
@dataclass(frozen=True)
class ScheduleRow:
    """One schedule: what it runs, when it last ran (and how that ended), when next."""

    name: str
    task_name: str
    cron: str
    tz: str
    last_tick: dt.datetime | None
    last_task: Any  # the last tick's task uuid, or None
    last_status: str | None  # None: no task (pruned, or never ran)
    next_tick: dt.datetime


def schedules(now: dt.datetime | None = None) -> tuple[list[ScheduleRow], str]:
    """The project's schedules with their last and next runs (one query for the last
    ticks, one for their tasks' statuses; none without schedules), and the error that
    would stop the scheduler, if any."""
    from django_qtasks import app
    from django_qtasks.exceptions import ConfigurationError
    from django_qtasks.worker.scheduler import collect_schedules

    now = now or timezone.now()
    try:
        found = collect_schedules(app)
    except ConfigurationError as exc:
        return [], str(exc)
    if not found:
        return [], ""
    last = app.broker.storage.last_schedule_runs([s.name for s in found])
    uuids = [run.task_uuid for run in last.values() if run.task_uuid is not None]
    statuses = reads.statuses(_alias(), uuids)
    rows = []
    for schedule in found:
        run = last.get(schedule.name)
        task = run.task_uuid if run else None
        rows.append(
            ScheduleRow(
                name=schedule.name,
                task_name=schedule.task_name,
                cron=schedule.cron,
                tz=schedule.tz,
                last_tick=run.tick if run else None,
                last_task=task,
                last_status=statuses.get(task) if task else None,
                next_tick=schedule.next_after(now),
            )
        )
    return rows, ""


FLOW_CAP = 50
"""Tasks of one stage of a flow a task's page links to at most (a big group lists the
rest in the task list, filtered by flow)."""


def flow_neighbours(task: TaskRecord) -> dict[int, list[TaskRecord]]:
    """The tasks of the stages before, at and after this task's in its flow (stage ->
    tasks in member order), through the flow index: a few rows, without their JSON."""
    if task.flow_id is None or task.flow_stage is None:
        return {}
    found: dict[int, list[TaskRecord]] = {}
    for stage in range(max(task.flow_stage - 1, 0), task.flow_stage + 2):
        found[stage] = reads.flow_stage(_alias(), task.flow_id, stage, FLOW_CAP)
    return found


# -- the views -----------------------------------------------------------------------------
def _can_pause(request: HttpRequest, model_admin: ModelAdmin[Any]) -> bool:
    config_admin = model_admin.admin_site.get_model_admin(ConfigEntry)
    return config_admin.has_change_permission(request)


def live_context(request: HttpRequest, model_admin: ModelAdmin[Any]) -> dict[str, Any]:
    """Everything the live part of the dashboard shows (also the GlobalConfig page's
    Workers and Queues sections)."""
    now = timezone.now()
    queues, queues_capped = queue_stats(now)
    schedule_rows, schedules_error = schedules(now)
    return {
        "now": now,
        "counts": status_counts(),
        "unknown_statuses": unknown_statuses(),
        "queues": queues,
        "queues_capped": queues_capped,
        "throughput": throughput(now),
        "workers": workers(now),
        "schedules": schedule_rows,
        "schedules_error": schedules_error,
        "can_pause": _can_pause(request, model_admin),
        "scan_cap": SCAN_CAP,
    }


def _refresh_seconds(request: HttpRequest) -> int:
    """Seconds between refreshes: 5, or ``?refresh=N`` (1 to 300) for a wall screen."""
    try:
        return min(max(int(request.GET.get("refresh", 5)), 1), 300)
    except ValueError:
        return 5


def dashboard_view(request: HttpRequest, model_admin: ModelAdmin[Any]) -> HttpResponse:
    """The dashboard page; with ``?fragment=1`` only its live part, for the page's script."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    context = live_context(request, model_admin)
    if request.GET.get("fragment"):
        return TemplateResponse(request, "django_qtasks/admin/dashboard_live.html", context)
    opts = model_admin.opts
    context.update(
        model_admin.admin_site.each_context(request),
        title=_("Task queue dashboard"),
        opts=opts,
        app_label=opts.app_label,
        refresh_seconds=_refresh_seconds(request),
        breadcrumbs_as_list=django.VERSION >= (6, 0),
    )
    return TemplateResponse(request, "django_qtasks/admin/dashboard.html", context)
