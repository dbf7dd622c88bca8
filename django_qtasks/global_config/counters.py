"""Task counters for the metrics endpoint, kept by the workers themselves.

Counting finished rows on every scrape would read a table that grows without limit,
so each worker counts the outcomes it stores (in memory, off the database) and adds
what it counted since the last time to its own GlobalConfig entry on each heartbeat:
no write on the task's path, and no two workers writing the same row. A worker that
leaves folds its entry into a ``retired`` total, and so does whoever forgets a dead
worker, so the sum over the entries (what the metrics view reports) never goes down.

Every change is a :meth:`~django_qtasks.global_config.BaseGlobalConfig.merge` of a
delta, so moving numbers between entries at any time keeps the sum exact, even if a
worker thought dead comes back and keeps counting.

The entry's JSON value, by queue and then task name::

    {"default": {"myapp.tasks.send": {
        "success": 10, "error": 1, "retry": 2, "cancel": 0,
        "duration": {"count": 13, "sum": 4.2, "buckets": {"0.5": 12, "+Inf": 1}},
        "latency": {"count": 13, "sum": 0.9, "buckets": {"0.1": 13}}}}}

Histogram buckets are counted per bucket (not cumulated) and keyed by their upper
bound, so entries written with other bounds still add up.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Collection, Iterable
from typing import Any

from django_qtasks.global_config.global_config import BaseGlobalConfig
from django_qtasks.global_config.shapes import counters_fault
from django_qtasks.values import Task

METRICS = "metrics"  # the GlobalConfig name; one entry per worker id, plus RETIRED
RETIRED = "retired"  # the totals of workers that are gone

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
           900.0, 3600.0)  # fmt: skip
"""Upper bounds (seconds) of the duration and latency histograms; past the last: +Inf."""

_BUCKET_KEYS = [str(bound) for bound in BUCKETS]

Series = dict[str, Any]
Totals = dict[str, dict[str, Series]]  # queue -> task name -> series


def add(*values: Any) -> Any:
    """The sum of nested dicts of numbers, key by key (``None`` counts as nothing)."""
    present = [value for value in values if value is not None]
    if not present:
        return None
    if not isinstance(present[0], dict):
        return sum(present)
    keys = dict.fromkeys(key for value in present for key in value)
    return {key: add(*(value.get(key) for value in present)) for key in keys}


def _observe(histogram: dict[str, Any], seconds: float) -> None:
    index = bisect.bisect_left(BUCKETS, seconds)
    key = _BUCKET_KEYS[index] if index < len(BUCKETS) else "+Inf"
    histogram["count"] = histogram.get("count", 0) + 1
    histogram["sum"] = histogram.get("sum", 0.0) + seconds
    buckets = histogram.setdefault("buckets", {})
    buckets[key] = buckets.get(key, 0) + 1


class TaskCounters:
    """What one worker counted since its last flush; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._delta: Totals = {}

    def record(self, task: Task, status: str, duration: float | None = None) -> None:
        """Count one stored outcome of ``task`` (the claimed snapshot): its status, how
        long the attempt ran, and how long it waited between ready and started."""
        latency = None
        if task.started_at is not None:
            latency = max(0.0, (task.started_at - task.run_after).total_seconds())
        with self._lock:
            series = self._delta.setdefault(task.queue, {}).setdefault(task.task_name, {})
            series[status] = series.get(status, 0) + 1
            if duration is not None:
                _observe(series.setdefault("duration", {}), duration)
            if latency is not None:
                _observe(series.setdefault("latency", {}), latency)

    def _take(self) -> Totals:
        with self._lock:
            delta, self._delta = self._delta, {}
        return delta

    def _give_back(self, delta: Totals) -> None:
        with self._lock:
            self._delta = add(self._delta, delta)

    def flush(self, config: BaseGlobalConfig, worker_id: str) -> None:
        """Add what was counted to this worker's entry (on each heartbeat); on a database
        error the numbers are kept for the next flush and the error is raised."""
        self._merge(config, worker_id, ())

    def retire(self, config: BaseGlobalConfig, worker_id: str) -> None:
        """Fold this worker's entry and what it counted since into the retired totals
        (when the worker leaves)."""
        self._merge(config, RETIRED, (worker_id,))

    def _merge(self, config: BaseGlobalConfig, key: str, take: Collection[str]) -> None:
        delta = self._take()
        if not delta and not take:
            return
        try:
            config.merge(METRICS, key, lambda current, taken: _sum(current, *taken, delta), take)
        except BaseException:
            self._give_back(delta)
            raise


def retire_orphans(config: BaseGlobalConfig, live: Iterable[str]) -> int:
    """Fold the entries of workers that are no longer alive into the retired totals
    (after their heartbeats were forgotten); the number of entries folded."""
    orphans = set(config.items(METRICS)) - set(live) - {RETIRED}
    if orphans:
        config.merge(METRICS, RETIRED, lambda current, taken: _sum(current, *taken), orphans)
    return len(orphans)


def totals(config: BaseGlobalConfig) -> Totals:
    """Everything every worker ever counted (and flushed): the sum of all the entries."""
    return add({}, *config.valid_items(METRICS, counters_fault).values())  # type: ignore[no-any-return]


def _sum(*entries: Any) -> Totals:
    """The sum of counter entries, leaving out one of the wrong shape (written by hand):
    a merge that raised on it would lose every later count of that worker."""
    good = [entry for entry in entries if entry is None or counters_fault("", entry) is None]
    return add(*good) or {}
