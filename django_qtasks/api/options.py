"""EnqueueOptions and the checks every enqueue passes, in one place.

Each entry point (``add_task``, ``add_tasks``, a pending call, the django.tasks backend,
flows, schedules) builds one :class:`EnqueueOptions` and lets it validate and default
the options; the arguments go through :func:`check_json`. Anything that cannot be
stored, or would later stop a worker, is refused here with :class:`InvalidTaskCall`
naming the field, before anything is written: a raw database error would also abort
the caller's whole ``transaction.atomic()``. docs/tasks.md#limits lists the limits.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from django.utils import timezone

from django_qtasks.exceptions import InvalidTaskCall
from django_qtasks.settings import MAX_COUNT, PRIORITY_MAX, PRIORITY_MIN, QUEUE_NAME_RE

# What an argument may be is Storage's rule; here too, their old import path.
from django_qtasks.storage.arguments import MAX_DEPTH as MAX_DEPTH
from django_qtasks.storage.arguments import check_json as check_json
from django_qtasks.storage.arguments import check_text
from django_qtasks.storage.arguments import check_value as check_value

if TYPE_CHECKING:
    from django_qtasks.api.task import TaskOptions
    from django_qtasks.settings import QTasksSettings

RunAfter = dt.datetime | dt.timedelta | int | float | None

# task_name, unique_key and concurrency_key are VARCHAR(255) columns.
MAX_KEY_LENGTH = 255
# run_after in seconds (or a timedelta) may be at most this far from now, either way.
MAX_DELAY = 100 * 366 * 86400.0


def validate_priority(priority: Any) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidTaskCall(f"priority must be an integer, got {priority!r}.")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidTaskCall(
            f"priority must be from {PRIORITY_MIN} to {PRIORITY_MAX} (higher runs first), "
            f"got {priority}."
        )
    return priority


def retry_problem(field: str, retries: Any) -> str | None:
    """Why ``retries`` cannot be a task's retry count, or None: it is an integer from 0
    to :data:`~django_qtasks.settings.MAX_COUNT`, as ``DEFAULT_RETRY`` is, far inside
    the ``max_retries`` column (a count past it would fail only when enqueued, as a
    database error). The callers raise their own API's exception with this text."""
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_COUNT:
        return f"{field} must be an integer from 0 to {MAX_COUNT:,}, got {retries!r}"
    return None


def validate_queue(queue: Any, allowed: Sequence[str] | None) -> str:
    if not isinstance(queue, str) or not QUEUE_NAME_RE.match(queue):
        raise InvalidTaskCall(
            f"queue must be a name of letters, digits and _ . : - (at most 64), got {queue!r}."
        )
    if allowed is not None and queue not in allowed:
        raise InvalidTaskCall(f"queue {queue!r} is not in QTASKS['QUEUES'] ({', '.join(allowed)}).")
    return queue


def validate_key(field: str, value: Any) -> str:
    """A task name, unique key or concurrency key: a non-empty string that fits its
    column and that every database can store."""
    if not isinstance(value, str) or not value:
        raise InvalidTaskCall(f"{field} must be a non-empty string, got {value!r}.")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidTaskCall(
            f"{field} must be at most {MAX_KEY_LENGTH} characters, got {len(value):,}: "
            f"{value[:40]!r}..."
        )
    check_text(field, value)
    return value


def validate_timeout(timeout: Any, field: str = "timeout") -> float | None:
    """Seconds to wait for a result: ``None`` (no wait) or a finite number >= 0. A NaN
    would make the wait never end."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidTaskCall(f"{field} must be a number of seconds, got {timeout!r}.")
    if not math.isfinite(timeout) or timeout < 0:
        raise InvalidTaskCall(f"{field} must be a finite number of seconds >= 0, got {timeout!r}.")
    return float(timeout)


def validate_run_after(run_after: Any) -> RunAfter:
    """The type and range of ``run_after``, without turning it into a time yet."""
    if run_after is None:
        return None
    if isinstance(run_after, dt.datetime):
        if timezone.is_naive(run_after):
            raise InvalidTaskCall(
                "run_after must be an aware datetime (use django.utils.timezone)."
            )
        return run_after
    if isinstance(run_after, dt.timedelta):
        seconds: float = run_after.total_seconds()
    elif isinstance(run_after, (int, float)) and not isinstance(run_after, bool):
        seconds = run_after  # an int of any size compares exactly; NaN compares False
    else:
        raise InvalidTaskCall(
            f"run_after must be a datetime, a timedelta or seconds, got {type(run_after).__name__}."
        )
    if not abs(seconds) <= MAX_DELAY:
        raise InvalidTaskCall(
            f"run_after must be finite and at most {MAX_DELAY:,.0f} seconds (100 years) "
            f"from now, got {run_after!r}."
        )
    return cast(RunAfter, run_after)


def resolve_run_after(run_after: RunAfter) -> dt.datetime | None:
    """Turn ``datetime | timedelta | seconds`` into an aware datetime."""
    run_after = validate_run_after(run_after)
    if run_after is None or isinstance(run_after, dt.datetime):
        return run_after
    if isinstance(run_after, dt.timedelta):
        return timezone.now() + run_after
    return timezone.now() + dt.timedelta(seconds=run_after)


@dataclass(frozen=True, kw_only=True)
class EnqueueOptions:
    """The options of one enqueue, validated when built: a value of the wrong type or
    range raises :class:`InvalidTaskCall` naming it. ``None`` means "the task's option,
    else the settings' default" (:meth:`defaults`)."""

    priority: int | None = None
    queue: str | None = None
    run_after: RunAfter = None
    unique_key: str | None = None
    concurrency_key: str | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.priority is not None:
            validate_priority(self.priority)
        if self.queue is not None:
            validate_queue(self.queue, None)
        validate_run_after(self.run_after)
        if self.unique_key is not None:
            validate_key("unique_key", self.unique_key)
        if self.concurrency_key is not None:
            validate_key("concurrency_key", self.concurrency_key)
        validate_timeout(self.timeout)

    def defaults(self, task: TaskOptions | None, settings: QTasksSettings) -> tuple[int, str]:
        """Priority and queue, each given here, else the task's option, else the
        settings' default; the queue checked against ``QTASKS['QUEUES']``."""
        priority = self.priority
        if priority is None and task is not None:
            priority = task.priority
        queue = self.queue or (task.queue if task else None) or settings.default_queue
        validate_queue(queue, settings.queues)
        return (settings.default_priority if priority is None else priority), queue


# The options of a call that gives none (most calls): built and checked once.
NO_OPTIONS = EnqueueOptions()


def enqueue_options(
    priority: int | None = None,
    queue: str | None = None,
    run_after: RunAfter = None,
    unique_key: str | None = None,
    concurrency_key: str | None = None,
    timeout: float | None = None,
) -> EnqueueOptions:
    """The options of one ``add_task()`` call; :data:`NO_OPTIONS` when it gives none,
    so the common call builds and checks nothing (enqueueing is a hot path)."""
    if (
        priority is None
        and queue is None
        and run_after is None
        and unique_key is None
        and concurrency_key is None
        and timeout is None
    ):
        return NO_OPTIONS
    return EnqueueOptions(
        priority=priority,
        queue=queue,
        run_after=run_after,
        unique_key=unique_key,
        concurrency_key=concurrency_key,
        timeout=timeout,
    )


def check_call_shape(args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
    """Positional arguments as a list, keyword arguments as a dict of strings: a string
    given as the argument tuple, or a list as the keywords, is refused instead of being
    stored as something the caller did not mean."""
    if isinstance(args, (str, bytes, bytearray, Mapping)) or not isinstance(args, (list, tuple)):
        raise InvalidTaskCall(
            f"args must be a list or tuple of positional arguments, got {type(args).__name__}: "
            f"{_short(args)}."
        )
    if not isinstance(kwargs, Mapping):
        raise InvalidTaskCall(
            f"kwargs must be a dict of keyword arguments, got {type(kwargs).__name__}: "
            f"{_short(kwargs)}."
        )
    for key in kwargs:
        if not isinstance(key, str):
            raise InvalidTaskCall(f"kwargs keys must be strings, got {key!r}.")
    return list(args), dict(kwargs)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
