"""Retention: delete old finished tasks in bounded batches.

Each batch is one short ``DELETE`` (its own transaction) of at most ``batch_size`` rows
found through the finished-rows index, so the table is never locked for long and
workers keep claiming meanwhile; waiting and running tasks are never touched. Used by
``python manage.py qtasks_prune`` and, with ``QTASKS["PRUNE_AFTER"]``, by every
worker's heartbeat (one batch per rescue pass). See docs/retention.md.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

from django.utils import timezone

from django_qtasks.models import FINISHED_STATUSES
from django_qtasks.storage.interface import BaseStorage

_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


MAX_AGE = dt.timedelta(days=100 * 366)


def parse_age(text: str) -> dt.timedelta:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"`` or plain seconds (``"3600"``)."""
    match = _AGE_RE.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not an age: use a number with s, m, h, d or w (7d, 12h, 30m), "
            "or plain seconds"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"the age must be more than 0, got {text!r}")
    if not seconds <= MAX_AGE.total_seconds():
        # Longer ago than this would reach before year 1 (an OverflowError), and means
        # nothing for a queue anyway.
        raise ValueError(f"the age must be at most {MAX_AGE.days:,} days, got {text!r}")
    return dt.timedelta(seconds=seconds)


def parse_statuses(text: str) -> tuple[str, ...]:
    """``"success,error"`` -> the statuses, each one of the finished ones."""
    statuses = tuple(s.strip() for s in text.split(",") if s.strip())
    wrong = [s for s in statuses if s not in FINISHED_STATUSES]
    if not statuses or wrong:
        raise ValueError(
            f"statuses must be among {', '.join(FINISHED_STATUSES)} (finished tasks only); "
            f"got {text!r}"
        )
    return statuses


@dataclass
class PruneResult:
    tasks: int = 0
    schedule_runs: int = 0
    batches: int = 0


def prune(
    storage: BaseStorage,
    older_than: dt.timedelta,
    *,
    statuses: Collection[str] = FINISHED_STATUSES,
    batch_size: int = 1000,
    on_batch: Callable[[int], None] | None = None,
    now: dt.datetime | None = None,
) -> PruneResult:
    """Delete every task of ``statuses`` that finished more than ``older_than`` ago, one
    batch after another until none is left; then the schedule runs older than that
    (each schedule keeps its newest). ``on_batch`` hears each batch's count. It drives
    Storage's one-batch statements and nothing else, so it takes Storage: the command,
    the heartbeat and a user's script all reach it as ``broker.storage``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    before = (now or timezone.now()) - older_than
    result = PruneResult()
    while True:
        deleted = storage.prune(before, statuses, batch_size)
        result.tasks += deleted
        if deleted:
            result.batches += 1
            if on_batch is not None:
                on_batch(deleted)
        if deleted < batch_size:
            break
    while True:
        deleted = storage.prune_schedule_runs(before, batch_size)
        result.schedule_runs += deleted
        if deleted < batch_size:
            break
    return result
