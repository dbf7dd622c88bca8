"""The scheduler: periodic tasks, each tick enqueued exactly once by all workers together.

Every worker runs a :class:`Scheduler` on a thread of its own. It keeps the next due
tick of each schedule in memory, so while nothing is due it sleeps and does not touch
the database. When a tick is due, it asks Storage to enqueue it: the tick's
``ScheduleRun`` row (unique on ``(schedule, tick)``) and the task go in together, in
one transaction, and a worker that comes second finds the row and stores nothing. So
the database, not timing, makes each tick run once, with one worker or fifty.

Missed ticks (all workers down, or a worker too busy to look): only the **most recent**
due tick is enqueued, never a burst of the ones in between. When a worker starts, it
reads each schedule's newest tick from the database: with ``catch_up`` (the default)
the latest tick missed since then runs at once; without it, the schedule waits for its
next tick. A schedule that never ran starts at its next tick.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.db import DatabaseError, connections
from django.utils import timezone

from django_qtasks import signals
from django_qtasks.api.options import EnqueueOptions
from django_qtasks.cron import get_zone, latest_tick, next_tick
from django_qtasks.exceptions import ConfigurationError, QTasksError
from django_qtasks.log import task_fields
from django_qtasks.values import Task, TaskSpec
from django_qtasks.worker.dbretry import DatabaseRetry
from django_qtasks.worker.faults import FailureStreak

if TYPE_CHECKING:
    from django_qtasks.api.queue_tasks import BaseQueueTasks

logger = logging.getLogger("django_qtasks.scheduler")

MAX_SLEEP = 30.0
"""Seconds the scheduler thread sleeps at most, so a changed clock is noticed."""

MAX_DB_BACKOFF = 30.0


@dataclass(frozen=True)
class Schedule:
    """One periodic task: enqueue ``task_name`` with these arguments at every tick."""

    name: str
    task_name: str
    cron: str
    tz: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: int | None = None
    catch_up: bool = True
    source: str = ""  # where it was declared, for error messages

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first tick strictly after ``moment`` (UTC)."""
        return next_tick(self.cron, get_zone(self.tz), moment)

    def latest_at(self, moment: dt.datetime) -> dt.datetime:
        """The last tick at or before ``moment`` (UTC)."""
        return latest_tick(self.cron, get_zone(self.tz), moment)


def default_tz() -> str:
    """Schedules without a time zone use Django's ``TIME_ZONE`` (UTC if unset)."""
    return getattr(django_settings, "TIME_ZONE", None) or "UTC"


def collect_schedules(app: BaseQueueTasks) -> list[Schedule]:
    """The app's schedules, checked: ``@app.task(cron=...)`` tasks, then
    ``QTASKS["SCHEDULE"]``. A name used twice, a task that is not registered, or
    arguments the task cannot take raise :class:`ConfigurationError` naming it."""
    registry = app.registry
    schedules: dict[str, Schedule] = {}
    for name in registry.names():
        options = registry.get(name).options
        if options.cron:
            schedules[name] = Schedule(
                name=name,
                task_name=name,
                cron=options.cron,
                tz=options.cron_tz or default_tz(),
                catch_up=options.cron_catch_up,
                source=f"@app.task(cron=...) of task {name!r}",
            )
    for entry in app.settings.schedule:
        where = f"QTASKS['SCHEDULE'][{entry.name!r}]"
        if entry.name in schedules:
            raise ConfigurationError(
                f"{where}: the name {entry.name!r} is taken by the periodic task of that "
                "name (@app.task(cron=...)); give the schedule another name."
            )
        schedules[entry.name] = Schedule(
            name=entry.name,
            task_name=entry.task,
            cron=entry.cron,
            tz=entry.tz or default_tz(),
            args=list(entry.args),
            kwargs=dict(entry.kwargs),
            queue=entry.queue,
            priority=entry.priority,
            catch_up=entry.catch_up,
            source=where,
        )
    for schedule in schedules.values():
        _check(app, schedule)
    return list(schedules.values())


def _check(app: BaseQueueTasks, schedule: Schedule) -> None:
    """Fail at start, not at the first tick: the task exists and takes the arguments."""
    try:
        task = app.registry.get(schedule.task_name)
    except QTasksError:
        raise ConfigurationError(
            f"{schedule.source} runs task {schedule.task_name!r}, which is not registered. "
            "Is its module (tasks.py of an installed app) imported, and the name spelled "
            f"right? Registered: {', '.join(app.registry.names()) or 'none'}."
        ) from None
    try:
        signature = inspect.signature(task.func)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        leading = [None] if task.options.echo else []  # the context object
        try:
            signature.bind(*leading, *schedule.args, **schedule.kwargs)
        except TypeError as exc:
            raise ConfigurationError(
                f"{schedule.source}: task {schedule.task_name!r} cannot be called with "
                f"args={schedule.args!r}, kwargs={schedule.kwargs!r}: {exc}."
            ) from None
    try:
        build_spec(app, schedule)
    except (QTasksError, TypeError) as exc:
        raise ConfigurationError(f"{schedule.source}: {exc}") from None


def build_spec(app: BaseQueueTasks, schedule: Schedule) -> TaskSpec:
    return app.build_spec(
        schedule.task_name,
        schedule.args,
        schedule.kwargs,
        EnqueueOptions(priority=schedule.priority, queue=schedule.queue),
    )


class Scheduler:
    """Enqueues due ticks of the app's schedules; runs on a thread of each worker.

    ``clock`` (aware ``datetime``) can be replaced in tests, which then call
    :meth:`run_pending` themselves instead of starting the thread.
    """

    def __init__(
        self,
        app: BaseQueueTasks,
        *,
        schedules: Sequence[Schedule] | None = None,
        worker_id: str = "",
        clock: Callable[[], dt.datetime] = timezone.now,
        retry: DatabaseRetry | None = None,
    ) -> None:
        self.app = app
        # The worker's, so that an outage is logged once per worker (docs/reliability.md);
        # a scheduler of its own (tests) keeps its own.
        self.retry = retry or DatabaseRetry.for_settings(app.settings)
        self.schedules = list(collect_schedules(app) if schedules is None else schedules)
        self.worker_id = worker_id
        self.clock = clock
        self._next: dict[str, dt.datetime] = {}
        self._primed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.faults = FailureStreak("The scheduler", logger, action="scheduler_loop_failed")

    # -- the decisions (one read at start, then one write per due tick) -------------------
    def prime(self, now: dt.datetime | None = None) -> None:
        """Read each schedule's newest tick and decide its next due one (see the module
        docstring for the missed-tick policy)."""
        now = now or self.clock()
        last = self.app.broker.storage.last_schedule_runs([s.name for s in self.schedules])
        for schedule in self.schedules:
            run = last.get(schedule.name)
            if run is not None and schedule.catch_up:
                # At or before now if ticks were missed: the latest of them runs at once.
                self._next[schedule.name] = schedule.next_after(run.tick)
            else:
                start = now if run is None else max(now, run.tick)
                self._next[schedule.name] = schedule.next_after(start)
        self._primed = True

    def next_due(self) -> dt.datetime | None:
        """The earliest tick due among the schedules (``None`` without schedules)."""
        return min(self._next.values(), default=None)

    def run_pending(self, now: dt.datetime | None = None) -> list[Task]:
        """Enqueue, for each schedule with a due tick, its latest tick at or before
        ``now``; return the tasks this call created (a tick some other worker enqueued
        already is skipped). No database access when nothing is due."""
        now = now or self.clock()
        if not self._primed:
            self.prime(now)
        created = []
        for schedule in self.schedules:
            due = self._next.get(schedule.name)
            if due is None or due > now:
                continue
            tick = schedule.latest_at(now)
            spec = build_spec(self.app, schedule)
            task = self.app.broker.storage.add_scheduled(schedule.name, tick, spec, self.worker_id)
            self._next[schedule.name] = schedule.next_after(tick)
            if task is None:
                continue
            created.append(task)
            logger.info(
                "Schedule %r: enqueued task %s for the tick of %s",
                schedule.name,
                task.uuid,
                tick.isoformat(),
                extra=task_fields(task, action="scheduled", schedule=schedule.name, tick=tick),
            )
            signals.task_enqueued.send(sender=type(self.app), task=task)
        return created

    # -- the thread ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread (nothing to do, and no thread, without schedules)."""
        if not self.schedules or self._thread is not None:
            return
        names = ", ".join(f"{s.name} ({s.cron}, {s.tz})" for s in self.schedules)
        logger.info("Scheduler: %s", names, extra={"action": "scheduler_started"})
        self._thread = threading.Thread(target=self._run, name="qtasks-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self.run_pending()
                    failures = 0
                except DatabaseError:
                    failures += 1
                    delay = min(MAX_DB_BACKOFF, 0.5 * 2**failures)
                    self.retry.failed(
                        "Scheduler: database error; trying again in %.1f s",
                        delay,
                        action="scheduler_failed",
                    )
                    self._stop.wait(delay)
                    continue
                except Exception:
                    # Not the database's (a bug, a plug-in's): logged once per streak; a
                    # due tick stays due (its enqueue is idempotent), so it is tried again.
                    self._stop.wait(self.faults.failed())
                    continue
                self.faults.succeeded()
                due = self.next_due()
                delay = MAX_SLEEP
                if due is not None:
                    delay = min(MAX_SLEEP, (due - self.clock()).total_seconds())
                self._stop.wait(max(0.01, delay))
        finally:
            connections.close_all()


__all__ = ["Schedule", "Scheduler", "collect_schedules"]
