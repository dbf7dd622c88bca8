"""Cron expressions in a time zone: validation and stepping, through croniter.

croniter (https://github.com/pallets-eco/croniter, MIT) is a well-kept, widely used
parser, now maintained under the pallets-eco organisation; we use it instead of
writing a parser of our own. Everything here is pure (no I/O) so that settings, task
registration and the scheduler share one set of rules.

An expression has 5 fields (minute, hour, day of month, month, day of week) or 6,
the sixth being **seconds**, put last as croniter does (``* * * * * */10`` is every
ten seconds, while ``*/10 * * * * *`` is every second of every tenth minute).
``@hourly``, ``@daily``, ``@weekly``, ``@monthly`` and ``@yearly`` work too.
Ticks are computed as wall-clock times in the schedule's time zone (``zoneinfo``), so
``0 9 * * 1-5`` means 9:00 local time on weekdays, summer and winter alike.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from functools import lru_cache

from croniter import croniter


class CronError(ValueError):
    """An expression or a time zone that cannot be used; the message says why."""


def validate_cron(expression: object) -> str:
    """The expression, or :class:`CronError`. Only 5 or 6 fields (or an ``@`` alias)."""
    if not isinstance(expression, str) or not expression.strip():
        raise CronError(f"a cron expression must be a non-empty string, got {expression!r}")
    expression = " ".join(expression.split())
    fields = expression.split(" ")
    if not expression.startswith("@") and len(fields) not in (5, 6):
        raise CronError(
            f"cron expression {expression!r} has {len(fields)} fields; use 5 (minute hour "
            "day month weekday) or 6 (the sixth is seconds)"
        )
    if not croniter.is_valid(expression):
        raise CronError(f"cron expression {expression!r} is not valid")
    return expression


@lru_cache(maxsize=64)
def get_zone(name: str) -> dt.tzinfo:
    """The time zone called ``name`` (an IANA name such as ``"Europe/Paris"``)."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise CronError(
            f"unknown time zone {name!r} (use an IANA name like 'Europe/Paris')"
        ) from None


def validate_tz(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise CronError(f"a time zone must be a non-empty string, got {name!r}")
    get_zone(name)
    return name


def next_tick(expression: str, zone: dt.tzinfo, after: dt.datetime) -> dt.datetime:
    """The first tick strictly after ``after`` (an aware datetime), in UTC."""
    start = after.astimezone(zone)
    tick: dt.datetime = croniter(expression, start).get_next(dt.datetime)
    return tick.astimezone(dt.timezone.utc)


def latest_tick(expression: str, zone: dt.tzinfo, at: dt.datetime) -> dt.datetime:
    """The last tick at or before ``at`` (an aware datetime), in UTC."""
    # croniter's get_prev is strictly before its start; a hair later makes it "at or before".
    start = (at + dt.timedelta(microseconds=1)).astimezone(zone)
    tick: dt.datetime = croniter(expression, start).get_prev(dt.datetime)
    return tick.astimezone(dt.timezone.utc)
