"""How the admin writes times and durations: always to the second.

One place for the task list, a task's page and the dashboard, so "6:01 a.m." (Django's
default format, minutes only) never stands for two runs ten seconds apart.
"""

from __future__ import annotations

import datetime as dt

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()

EMPTY = "-"  # what an empty cell shows


@register.filter
def qtasks_duration(value: dt.timedelta | None) -> str:
    """``0.042 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``: short and sortable by eye."""
    if value is None:
        return EMPTY
    seconds = value.total_seconds()
    if seconds < 10:
        return f"{seconds:.3f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@register.filter
def qtasks_time(value: dt.datetime | None) -> SafeString | str:
    """The full local time to the second, with its zone: ``2026-12-07 14:03:27 UTC``."""
    if value is None:
        return EMPTY
    local = timezone.localtime(value)
    return format_html(
        '<time datetime="{}">{}</time>', value.isoformat(), local.strftime("%Y-%m-%d %H:%M:%S %Z")
    )


@register.filter
def qtasks_short_time(value: dt.datetime | None) -> SafeString | str:
    """``14:03:27`` today, ``Nov 28`` over ``14:03:27`` before: a narrow list column,
    to the second; the full time is in the tooltip."""
    if value is None:
        return EMPTY
    local = timezone.localtime(value)
    clock = local.strftime("%H:%M:%S")
    title = local.strftime("%Y-%m-%d %H:%M:%S %Z")
    if local.date() == timezone.localdate():
        return format_html(
            '<time datetime="{}" title="{}">{}</time>', value.isoformat(), title, clock
        )
    return format_html(
        '<time datetime="{}" title="{}"><span class="qtasks-day">{}</span> {}</time>',
        value.isoformat(),
        title,
        local.strftime("%b %d"),
        clock,
    )
