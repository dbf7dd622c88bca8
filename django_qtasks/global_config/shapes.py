"""The shape of each GlobalConfig entry the queue reads, and its check.

GlobalConfig rows can be written by anyone with the admin's change permission, by
hand in the database, or by another version: the queue checks each value it reads
(:meth:`~django_qtasks.global_config.BaseGlobalConfig.valid_items`) and ignores a bad
one, and the admin's form refuses one. Each check returns what is wrong, or ``None``.
"""

from __future__ import annotations

import math
from typing import Any

from django_qtasks.settings import QUEUE_NAME_RE


def queue_flag_fault(key: str, value: Any) -> str | None:
    """A ``queues`` entry: the key a queue name, the value ``{"paused": true, "since":
    "<ISO time>"}`` (both optional)."""
    if not QUEUE_NAME_RE.match(key):
        return "the key must be a queue name (letters, digits and _ . : -, at most 64)"
    if not isinstance(value, dict):
        return 'the value must be an object such as {"paused": true}'
    if not isinstance(value.get("paused", False), bool):
        return '"paused" must be true or false'
    if not isinstance(value.get("since", ""), str):
        return '"since" must be a time written as text'
    return None


def worker_fault(key: str, value: Any) -> str | None:
    """A ``workers`` entry (a heartbeat): an object; its ``queues`` a list of names or
    null (every queue)."""
    if not isinstance(value, dict):
        return "a heartbeat must be an object"
    queues = value.get("queues")
    if queues is not None and not (
        isinstance(queues, list) and all(isinstance(queue, str) for queue in queues)
    ):
        return '"queues" must be a list of queue names or null'
    return None


def counters_fault(key: str, value: Any) -> str | None:
    """A ``metrics`` entry: queue -> task name -> series of counts and histograms
    (:mod:`~django_qtasks.global_config.counters`)."""
    if not isinstance(value, dict):
        return "counters must be an object of queues"
    for queue, by_task in value.items():
        if not isinstance(by_task, dict):
            return f"the counters of queue {queue!r} must be an object of task names"
        for name, series in by_task.items():
            if not (isinstance(series, dict) and all(map(_is_count, series.values()))):
                return f"the counters of {queue!r} {name!r} must be numbers and histograms"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    """A count, or a histogram ``{"count": n, "sum": s, "buckets": {bound: n}}``."""
    if not isinstance(value, dict):
        return _is_number(value)
    buckets = value.get("buckets", {})
    return (
        all(_is_number(value.get(field, 0)) for field in ("count", "sum"))
        and isinstance(buckets, dict)
        and all(map(_is_number, buckets.values()))
    )
