"""Periodic tasks: what is checked at import time and in settings, and the cron maths."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_qtasks import QueueTasks
from django_qtasks.cron import get_zone, latest_tick, next_tick
from django_qtasks.exceptions import TaskRegistrationError
from django_qtasks.settings import QTasksSettings, ScheduleEntry, build_settings

UTC = dt.timezone.utc


def at(*parts: int, tz: dt.tzinfo = UTC) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=tz)


@pytest.fixture
def local_app() -> QueueTasks:
    return QueueTasks(QTasksSettings())


# -- @app.task(cron=...) ------------------------------------------------------------------
def test_cron_options_are_kept(local_app):
    @local_app.task(name="cfg.nightly", cron="30  2 * * *", cron_tz="Europe/Paris")
    def nightly() -> None: ...

    assert nightly.options.cron == "30 2 * * *"  # normalised spaces
    assert nightly.options.cron_tz == "Europe/Paris"
    assert nightly.options.cron_catch_up is True


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, r"'cfg\.bad'.*not valid"),
        ({"cron": "* * * *"}, r"'cfg\.bad'.*4 fields"),
        ({"cron": ""}, r"'cfg\.bad'.*non-empty"),
        ({"cron": "* * * * *", "cron_tz": "Mars/Olympus"}, r"'cfg\.bad'.*unknown time zone"),
        ({"cron_tz": "UTC"}, r"need cron=.*cfg\.bad"),
        ({"cron": "* * * * *", "cron_catch_up": "no"}, r"cron_catch_up.*cfg\.bad"),
    ],
)
def test_bad_cron_options_fail_at_import_naming_the_task(local_app, options, message):
    with pytest.raises(TaskRegistrationError, match=message):

        @local_app.task(name="cfg.bad", **options)
        def bad() -> None: ...


# -- QTASKS["SCHEDULE"] ---------------------------------------------------------------------
def test_schedule_setting_is_validated_into_entries():
    settings = build_settings(
        {
            "SCHEDULE": {
                "digest": {
                    "task": "mail.send_digest",
                    "cron": "0 8 * * 1-5",
                    "tz": "Europe/Paris",
                    "args": [1],
                    "kwargs": {"kind": "daily"},
                    "queue": "mail",
                    "priority": 5,
                    "catch_up": False,
                }
            }
        }
    )
    assert settings.schedule == (
        ScheduleEntry(
            name="digest",
            task="mail.send_digest",
            cron="0 8 * * 1-5",
            tz="Europe/Paris",
            args=[1],
            kwargs={"kind": "daily"},
            queue="mail",
            priority=5,
            catch_up=False,
        ),
    )


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ([], r"QTASKS\['SCHEDULE'\] must be a dict"),
        ({"d": "x"}, r"QTASKS\['SCHEDULE'\]\['d'\] must be a dict"),
        ({"d": {"cron": "* * * * *"}}, r"\['d'\] needs a 'task'"),
        ({"d": {"task": "t"}}, r"\['d'\] needs a 'cron'"),
        ({"d": {"task": "t", "cron": "nope"}}, r"\['d'\]: cron expression"),
        ({"d": {"task": "t", "cron": "* * * * *", "tz": "Nowhere"}}, r"\['d'\]: unknown time"),
        ({"d": {"task": "t", "cron": "* * * * *", "every": 5}}, r"\['d'\] has unknown key"),
        ({"d": {"task": "t", "cron": "* * * * *", "args": "x"}}, r"\['d'\]\['args'\]"),
        ({"d": {"task": "t", "cron": "* * * * *", "kwargs": []}}, r"\['d'\]\['kwargs'\]"),
        ({"d": {"task": "t", "cron": "* * * * *", "queue": "a b"}}, r"\['d'\]\['queue'\]"),
        ({"d": {"task": "t", "cron": "* * * * *", "priority": 500}}, r"\['d'\]\['priority'\]"),
        ({"d": {"task": "", "cron": "* * * * *"}}, r"\['d'\]\['task'\]"),
    ],
)
def test_bad_schedule_settings_name_the_key(schedule, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        build_settings({"SCHEDULE": schedule})


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"PRUNE_AFTER": 0}, "'PRUNE_AFTER'"),
        ({"PRUNE_AFTER": "7d"}, "'PRUNE_AFTER'"),
        ({"PRUNE_BATCH_SIZE": 0}, "'PRUNE_BATCH_SIZE'"),
    ],
)
def test_bad_prune_settings_name_the_key(raw, named):
    with pytest.raises(ImproperlyConfigured, match=named):
        build_settings(raw)


def test_prune_settings():
    settings = build_settings({"PRUNE_AFTER": 7 * 86400, "PRUNE_BATCH_SIZE": 500})
    assert (settings.prune_after, settings.prune_batch_size) == (604800.0, 500)
    assert build_settings({}).prune_after is None


# -- the cron maths (croniter, in a time zone) ---------------------------------------------
def test_ticks_follow_the_wall_clock_of_the_time_zone():
    paris = get_zone("Europe/Paris")
    # 9:00 in Paris is 8:00 UTC in winter and 7:00 UTC in summer.
    assert next_tick("0 9 * * *", paris, at(2025, 1, 15, 12)) == at(2025, 1, 16, 8)
    assert next_tick("0 9 * * *", paris, at(2025, 7, 15, 12)) == at(2025, 7, 16, 7)


def test_latest_tick_includes_the_moment_itself():
    utc = get_zone("UTC")
    assert latest_tick("0 * * * *", utc, at(2025, 1, 1, 10)) == at(2025, 1, 1, 10)
    assert latest_tick("0 * * * *", utc, at(2025, 1, 1, 10, 59)) == at(2025, 1, 1, 10)
    assert next_tick("0 * * * *", utc, at(2025, 1, 1, 10)) == at(2025, 1, 1, 11)


def test_six_fields_count_seconds_last():
    utc = get_zone("UTC")
    assert next_tick("* * * * * */10", utc, at(2025, 1, 1, 0, 0, 1)) == at(2025, 1, 1, 0, 0, 10)


def test_daylight_saving_time():
    paris = get_zone("Europe/Paris")
    # Spring forward (30 March 2025): 02:30 does not exist; croniter runs it at 03:00.
    assert next_tick("30 2 * * *", paris, at(2025, 3, 29, 12)) == at(2025, 3, 30, 1)
    # Fall back (26 October 2025): 02:30 happens twice, at 00:30 and 01:30 UTC, and
    # both are ticks (two instants, so two runs).
    first = next_tick("30 2 * * *", paris, at(2025, 10, 25, 12))
    second = next_tick("30 2 * * *", paris, first)
    assert (first, second) == (at(2025, 10, 26, 0, 30), at(2025, 10, 26, 1, 30))
