"""Storage's and GlobalConfig's tables.

The task table is the queue: one row per task, its status says where it is. The
claim path reads only waiting rows through a partial index in claim order, so it
stays fast however many finished rows pile up.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid as uuid_lib
from typing import Any

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _


def uuid7() -> uuid_lib.UUID:
    """A time-ordered UUID (RFC 9562 version 7).

    New rows land at the right edge of the primary-key index instead of at random
    pages, which keeps inserts cheap on a large table.
    """
    return uuid7s(1)[0]


def uuid7s(count: int) -> list[uuid_lib.UUID]:
    """``count`` UUIDv7s of this millisecond, from one read of the random source (a
    bulk enqueue would otherwise make a system call per task)."""
    ms = (time.time_ns() // 1_000_000) & ((1 << 48) - 1)
    prefix = (ms << 80) | (0x7 << 76)
    random = os.urandom(10 * count)
    uuids = []
    for offset in range(0, 10 * count, 10):
        rand = int.from_bytes(random[offset : offset + 10], "big")
        value = prefix | (((rand >> 62) & 0xFFF) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
        uuids.append(uuid_lib.UUID(int=value))
    return uuids


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # where a lone one could come from


def _utf8(value: Any) -> bool:
    """Whether every string in the decoded JSON ``value`` can be encoded as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except (UnicodeEncodeError, RecursionError, ValueError):
        return False
    return True


class StoredJSONField(models.JSONField):
    """A JSON column that reads back whatever is stored in it. Django returns text that
    is not JSON as the text; this does the same for JSON that Python cannot decode
    (nested past its recursion limit, an integer past its digit limit), which a row
    written by another program may hold: one such row must not fail every query that
    lists it. JSON whose ``\\u`` escapes make a lone surrogate (SQLite and MariaDB keep
    it) is read as its text too: no page could be encoded with the string in it.
    Migrations see a plain ``JSONField``."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        try:
            decoded = super().from_db_value(value, expression, connection)
        except (RecursionError, ValueError):
            return value
        if isinstance(value, str) and _SURROGATE_ESCAPE.search(value) and not _utf8(decoded):
            return value
        return decoded

    def deconstruct(self) -> Any:
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.JSONField", args, kwargs


class TaskStatus(models.TextChoices):
    """Where a task is in its life. Stored as the plain strings below."""

    NEW = "new", _("new")
    """Waiting to be claimed; enters on ``add_task()``, leaves when a worker claims it
    (``process``) or it is cancelled. A future ``run_after`` holds it back until then."""

    PROCESS = "process", _("process")
    """Claimed by one worker (``worker_id``) and running; leaves as ``success``,
    ``error``, ``retry`` or ``cancel``."""

    RETRY = "retry", _("retry")
    """An attempt failed and another is allowed; waits like ``new`` until ``run_after``."""

    SUCCESS = "success", _("success")
    """Finished; ``returning`` holds the result. Final."""

    ERROR = "error", _("error")
    """Failed for good: attempts used up, or the error was not retryable. Final."""

    CANCEL = "cancel", _("cancel")
    """Cancelled before or while running. Final."""

    BLOCKED = "blocked", _("blocked")
    """A later step of a chain or group flow, waiting for the tasks before it: never
    claimed (it is not in the claim index). Becomes ``new`` when they all succeeded, in
    the transaction that stores the last one's result, or ``cancel`` if one of them
    failed or was cancelled. Not finished: retention never deletes it."""


WAITING_STATUSES = (TaskStatus.NEW, TaskStatus.RETRY)
# Not finished yet: a blocked task can still be cancelled, and it is not pruned.
ACTIVE_STATUSES = (TaskStatus.NEW, TaskStatus.RETRY, TaskStatus.PROCESS, TaskStatus.BLOCKED)
FINISHED_STATUSES = (TaskStatus.SUCCESS, TaskStatus.ERROR, TaskStatus.CANCEL)


class TaskRecord(models.Model):
    """One task: what to run, where it is in the queue, and how it ended."""

    uuid = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    task_name = models.CharField(max_length=255)
    queue = models.CharField(max_length=64, default="default")
    priority = models.SmallIntegerField(default=0)
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.NEW)
    args = StoredJSONField(default=list, blank=True)
    kwargs = StoredJSONField(default=dict, blank=True)
    returning = StoredJSONField(null=True, blank=True)
    traceback = models.TextField(blank=True, default="")
    errors = StoredJSONField(default=list, blank=True)
    attempt = models.PositiveIntegerField(default=0)
    max_retries = models.PositiveIntegerField(default=0)
    # Runs lost to the worker, not to the task (its worker died, the database cut its
    # connection): each sends the task back to waiting without spending an attempt, up
    # to QTASKS["MAX_RESCUES"]. A database default, so that every INSERT path (and a
    # worker of the previous release, during an upgrade) leaves it at 0.
    rescues = models.PositiveIntegerField(default=0, db_default=0)
    run_after = models.DateTimeField()
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    worker_id = models.CharField(max_length=128, blank=True, default="")
    # NULL, not "", for "no key": the partial unique index must ignore keyless rows.
    unique_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    cancel_requested = models.BooleanField(default=False)
    progress = StoredJSONField(null=True, blank=True)
    tags = StoredJSONField(default=list, blank=True)
    # Chains and groups (docs/workflows.md): the tasks of one flow share ``flow_id`` and
    # run stage after stage; the tasks of a group share a stage and are numbered by
    # ``flow_index`` (NULL for a plain chain step, whose one result is passed on alone).
    flow_id = models.UUIDField(null=True, blank=True)
    flow_stage = models.PositiveIntegerField(null=True, blank=True)
    flow_index = models.PositiveIntegerField(null=True, blank=True)
    # Concurrency limits (docs/concurrency-limits.md): at most ``max_concurrency`` rows
    # with the same ``(task_name, concurrency_key)`` run at once, on all workers. Both
    # are NULL for a task without a limit; the key is "" when the whole task is one group.
    concurrency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    max_concurrency = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        verbose_name = _("task")
        verbose_name_plural = _("tasks")
        ordering = ("-created_at",)
        indexes = [
            # The claim path: waiting rows only, in claim order.
            models.Index(
                models.F("priority").desc(),
                models.F("run_after"),
                models.F("created_at"),
                name="qtasks_claim_idx",
                condition=Q(status__in=["new", "retry"]),
            ),
            # Rescue and "running now" views look only at running rows.
            models.Index(
                fields=["worker_id"],
                name="qtasks_running_idx",
                condition=Q(status="process"),
            ),
            models.Index(fields=["status", "-created_at"], name="qtasks_status_idx"),
            # The admin's list, newest first, and its date filter: without it every page
            # of an unfiltered list sorts the whole table. The pk breaks ties, so the
            # order is total and needs no extra sort.
            models.Index(fields=["created_at", "uuid"], name="qtasks_created_idx"),
            # The admin's queue and task-name filters (newest first within one), and the
            # distinct queues and task names they list, read by skipping through these
            # indexes instead of scanning the table.
            models.Index(fields=["queue", "created_at"], name="qtasks_queue_idx"),
            models.Index(fields=["task_name", "created_at"], name="qtasks_name_idx"),
            # The dashboard's throughput and failure rate read the last hour of finished
            # rows; waiting and running rows have no finished_at, so they stay out.
            models.Index(
                fields=["finished_at", "status"],
                name="qtasks_finished_idx",
                condition=Q(finished_at__isnull=False),
            ),
            # A flow's next stage (released or cancelled when a stage ends) and the
            # admin's view of one flow; tasks outside flows stay out.
            models.Index(
                fields=["flow_id", "flow_stage"],
                name="qtasks_flow_idx",
                condition=Q(flow_id__isnull=False),
            ),
            # How many tasks of one concurrency group run now: a claim reads it for each
            # limited row it considers. Running limited rows only, so it stays tiny.
            models.Index(
                fields=["task_name", "concurrency_key"],
                name="qtasks_limited_running_idx",
                condition=Q(status="process") & Q(concurrency_key__isnull=False),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["task_name", "unique_key"],
                name="qtasks_unique_active_key",
                condition=Q(status__in=["new", "retry", "process"]) & Q(unique_key__isnull=False),
            ),
            models.CheckConstraint(
                condition=Q(priority__gte=-100) & Q(priority__lte=100),
                name="qtasks_priority_range",
            ),
            # A limit always comes with its group, and a group with a limit of 1 or more.
            models.CheckConstraint(
                condition=Q(max_concurrency__isnull=True, concurrency_key__isnull=True)
                | Q(max_concurrency__gte=1, concurrency_key__isnull=False),
                name="qtasks_concurrency_limit",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} [{self.status}] {self.uuid}"


class ConfigEntry(models.Model):
    """GlobalConfig's shared state: ``(name, key) -> value``, optionally expiring.

    Worker heartbeats live under ``name="workers"`` with a short ``expires_at``;
    queue flags and runtime settings live under their own names.
    """

    name = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    value = StoredJSONField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("global config entry")
        verbose_name_plural = _("global config entries")
        ordering = ("name", "key")
        constraints = [
            models.UniqueConstraint(fields=["name", "key"], name="qtasks_config_name_key"),
        ]

    def __str__(self) -> str:
        return f"{self.name}:{self.key}"


class ScheduleRun(models.Model):
    """One tick of a periodic task that was enqueued: ``(schedule, tick)`` is unique.

    The scheduler of every worker tries to insert the row of a due tick in the same
    transaction as the tick's task; the unique constraint lets exactly one of them in,
    whatever the number of workers, so each tick is enqueued once. The rows stay (up to
    pruning) after the task has finished, so a late worker cannot enqueue it again, and
    the newest row per schedule is its "last run".
    """

    schedule = models.CharField(max_length=255)
    tick = models.DateTimeField()
    task_uuid = models.UUIDField(null=True, blank=True)
    task_name = models.CharField(max_length=255)
    enqueued_at = models.DateTimeField()
    worker_id = models.CharField(max_length=128, blank=True, default="")

    class Meta:
        verbose_name = _("schedule run")
        verbose_name_plural = _("schedule runs")
        ordering = ("-tick",)
        constraints = [
            # Also the index for "the newest tick of each schedule" (read backwards).
            models.UniqueConstraint(fields=["schedule", "tick"], name="qtasks_schedule_tick"),
        ]
        indexes = [
            # Pruning finds old runs by their tick alone.
            models.Index(fields=["tick"], name="qtasks_schedule_run_tick_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.schedule} @ {self.tick.isoformat()}"
