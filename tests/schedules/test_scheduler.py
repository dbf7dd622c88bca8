"""The scheduler on a real database, with an injected clock: each tick once, whatever
the number of workers, and the missed-tick policy.

The schedules live on apps of their own (own registry, own settings), never on the
project's app, so no other test's worker ever sees them.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from django_qtasks import QueueTasks
from django_qtasks.exceptions import ConfigurationError
from django_qtasks.models import ScheduleRun, TaskRecord, TaskStatus
from django_qtasks.settings import build_settings
from django_qtasks.worker.scheduler import Schedule, Scheduler, collect_schedules
from tests.helpers import in_threads

pytestmark = pytest.mark.django_db

UTC = dt.timezone.utc
T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def make_app(**qtasks: object) -> QueueTasks:
    app = QueueTasks(build_settings(qtasks))

    @app.task(name="sched.every_minute", cron="* * * * *", cron_tz="UTC")
    def every_minute() -> None: ...

    @app.task(name="sched.report")
    def report(kind: str, *, copies: int = 1) -> None: ...

    return app


def minutes(n: float) -> dt.timedelta:
    return dt.timedelta(minutes=n)


def tasks_of(name: str) -> list[TaskRecord]:
    return list(TaskRecord.objects.filter(task_name=name).order_by("created_at"))


def ticks(schedule: str) -> list[dt.datetime]:
    return list(
        ScheduleRun.objects.filter(schedule=schedule)
        .order_by("tick")
        .values_list("tick", flat=True)
    )


# -- one worker ----------------------------------------------------------------------------
def test_nothing_before_the_first_tick_then_one_task_per_tick():
    app = make_app()
    scheduler = Scheduler(app, worker_id="w1")
    scheduler.prime(T0 + dt.timedelta(seconds=10))  # never ran: starts at the next tick
    assert scheduler.next_due() == T0 + minutes(1)

    with CountQueries() as idle:
        assert scheduler.run_pending(T0 + dt.timedelta(seconds=59)) == []
    assert idle.count == 0, "nothing due: no database access at all"

    created = scheduler.run_pending(T0 + minutes(1) + dt.timedelta(seconds=0.3))
    assert [t.task_name for t in created] == ["sched.every_minute"]
    assert scheduler.run_pending(T0 + minutes(1.5)) == []
    scheduler.run_pending(T0 + minutes(2))
    assert ticks("sched.every_minute") == [T0 + minutes(1), T0 + minutes(2)]
    run = ScheduleRun.objects.get(tick=T0 + minutes(2))
    assert (run.task_name, run.worker_id) == ("sched.every_minute", "w1")
    assert run.task_uuid == tasks_of("sched.every_minute")[-1].uuid


def test_settings_schedules_pass_their_arguments_queue_and_priority():
    app = make_app(
        SCHEDULE={
            "weekly-report": {
                "task": "sched.report",
                "cron": "0 9 * * 1",
                "tz": "Europe/Paris",
                "args": ["weekly"],
                "kwargs": {"copies": 2},
                "queue": "reports",
                "priority": 7,
            }
        }
    )
    scheduler = Scheduler(app)
    monday_9_paris = dt.datetime(2030, 1, 7, 8, 0, tzinfo=UTC)  # 9:00 CET
    scheduler.prime(monday_9_paris - minutes(5))
    [task] = [t for t in scheduler.run_pending(monday_9_paris) if t.task_name == "sched.report"]
    assert (task.args, task.kwargs, task.queue, task.priority) == (
        ["weekly"],
        {"copies": 2},
        "reports",
        7,
    )
    assert ticks("weekly-report") == [monday_9_paris]


# -- many workers: the database decides ------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_four_workers_over_several_ticks_enqueue_each_tick_exactly_once():
    """Four schedulers, each on its own thread and connection, all wake at the same
    instants (a barrier per tick) and race for the same ticks."""
    app = make_app()
    workers = 4
    rounds = [T0 + minutes(n) + dt.timedelta(seconds=0.2) for n in range(1, 7)]
    schedulers = [Scheduler(app, worker_id=f"w{n}") for n in range(workers)]
    for scheduler in schedulers:
        scheduler.prime(T0)
    barrier = threading.Barrier(workers, timeout=30)
    created: dict[str, int] = {}

    def run(scheduler: Scheduler) -> None:
        for now in rounds:
            barrier.wait()
            created[scheduler.worker_id] = created.get(scheduler.worker_id, 0) + len(
                scheduler.run_pending(now)
            )

    in_threads(run, [(s,) for s in schedulers], on_error=barrier.abort)

    expected = [T0 + minutes(n) for n in range(1, 7)]
    assert ticks("sched.every_minute") == expected
    assert len(tasks_of("sched.every_minute")) == len(expected)  # one task per tick
    assert sum(created.values()) == len(expected)
    runs = ScheduleRun.objects.filter(schedule="sched.every_minute")
    assert set(runs.values_list("task_uuid", flat=True)) == {
        t.uuid for t in tasks_of("sched.every_minute")
    }


def test_a_late_worker_never_enqueues_a_finished_tick_again():
    app = make_app()
    fast, late = Scheduler(app, worker_id="fast"), Scheduler(app, worker_id="late")
    fast.prime(T0)
    late.prime(T0)
    fast.run_pending(T0 + minutes(1))
    TaskRecord.objects.update(status=TaskStatus.SUCCESS, finished_at=T0 + minutes(1))
    # The late worker wakes up long after: the tick ran and finished; it adds nothing.
    assert late.run_pending(T0 + minutes(1) + dt.timedelta(seconds=40)) == []
    assert len(tasks_of("sched.every_minute")) == 1


# -- missed ticks --------------------------------------------------------------------------
def test_after_downtime_only_the_latest_missed_tick_runs():
    app = make_app()
    before = Scheduler(app)
    before.prime(T0)
    before.run_pending(T0 + minutes(1))  # ran at 12:01, then every worker stopped

    after = Scheduler(app)  # a worker starting at 12:10:30
    after.prime(T0 + minutes(10.5))
    assert after.next_due() == T0 + minutes(2)  # missed ticks are due at once...
    after.run_pending(T0 + minutes(10.5))
    # ...but only the latest of them (12:10) is enqueued, not 12:02 to 12:10.
    assert ticks("sched.every_minute") == [T0 + minutes(1), T0 + minutes(10)]
    assert after.next_due() == T0 + minutes(11)


def test_without_catch_up_missed_ticks_are_skipped():
    app = QueueTasks(build_settings({}))

    @app.task(name="sched.no_catch_up", cron="* * * * *", cron_tz="UTC", cron_catch_up=False)
    def no_catch_up() -> None: ...

    before = Scheduler(app)
    before.prime(T0)
    before.run_pending(T0 + minutes(1))
    after = Scheduler(app)
    after.prime(T0 + minutes(10.5))
    assert after.run_pending(T0 + minutes(10.5)) == []
    assert after.next_due() == T0 + minutes(11)


def test_a_busy_scheduler_coalesces_ticks_it_was_too_late_for():
    app = make_app()
    scheduler = Scheduler(app)
    scheduler.prime(T0)
    scheduler.run_pending(T0 + minutes(3.5))  # woke 2.5 ticks late
    assert ticks("sched.every_minute") == [T0 + minutes(3)]


# -- checked when the scheduler starts -------------------------------------------------------
def test_a_schedule_naming_an_unknown_task_fails_at_start():
    app = make_app(SCHEDULE={"nightly": {"task": "sched.nope", "cron": "0 3 * * *"}})
    with pytest.raises(ConfigurationError, match=r"\['nightly'\] runs task 'sched\.nope'"):
        Scheduler(app)


def test_a_bad_schedule_stops_the_worker_before_it_starts():
    app = make_app(SCHEDULE={"nightly": {"task": "sched.nope", "cron": "0 3 * * *"}})
    with pytest.raises(ConfigurationError, match=r"sched\.nope"):
        app.build_starter()
    app.build_starter(burst=True)  # burst workers run no scheduler


def test_the_worker_command_says_which_schedule_is_wrong(settings):
    settings.QTASKS = {**settings.QTASKS, "SCHEDULE": {"n": {"task": "x.y", "cron": "0 3 * * *"}}}
    with pytest.raises(CommandError, match=r"\['n'\] runs task 'x\.y'"):
        call_command("qtasks_worker")


def test_a_schedule_with_arguments_the_task_cannot_take_fails_at_start():
    app = make_app(SCHEDULE={"r": {"task": "sched.report", "cron": "0 3 * * *"}})
    with pytest.raises(ConfigurationError, match=r"\['r'\].*missing a required argument"):
        Scheduler(app)


def test_a_periodic_task_that_needs_arguments_fails_at_start():
    app = QueueTasks(build_settings({}))

    @app.task(name="sched.needs_args", cron="0 3 * * *")
    def needs_args(user_id: int) -> None: ...

    with pytest.raises(ConfigurationError, match=r"sched\.needs_args.*cannot be called"):
        collect_schedules(app)


def test_a_schedule_cannot_take_the_name_of_a_periodic_task():
    app = make_app(SCHEDULE={"sched.every_minute": {"task": "sched.report", "cron": "0 3 * * *"}})
    with pytest.raises(ConfigurationError, match="is taken"):
        collect_schedules(app)


def test_schedules_default_to_djangos_time_zone(settings):
    settings.TIME_ZONE = "Asia/Tokyo"
    app = QueueTasks(build_settings({}))

    @app.task(name="sched.tokyo", cron="0 9 * * *")
    def tokyo() -> None: ...

    [schedule] = collect_schedules(app)
    assert schedule == Schedule(
        name="sched.tokyo",
        task_name="sched.tokyo",
        cron="0 9 * * *",
        tz="Asia/Tokyo",
        source=schedule.source,
    )
    assert schedule.next_after(T0) == dt.datetime(2030, 1, 2, 0, 0, tzinfo=UTC)


class CountQueries:
    """Counts the statements run on the default connection while active."""

    def __enter__(self) -> CountQueries:
        self.count = 0

        def spy(execute: Callable[..., object], *args: object) -> object:
            self.count += 1
            return execute(*args)

        self._wrapper = connection.execute_wrapper(spy)
        self._wrapper.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._wrapper.__exit__(*exc)
