"""Structured logging: the fields our records carry, and a formatter that writes them.

Every record the worker emits about a task carries ``task_uuid``, ``task_name``,
``queue`` and ``attempt`` in its ``extra`` (and ``duration`` once the attempt ran), so
a log pipeline can filter and join on them without parsing messages. This module is
``log``, not ``logging``, so that the standard library's module stays reachable under
its own name everywhere in the package.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_qtasks.values import Task

# The attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12+: the asyncio task, not ours
}


def task_fields(task: Task, **more: Any) -> dict[str, Any]:
    """The ``extra`` of a log record about ``task`` (plus ``more``, e.g. ``action``)."""
    return {
        "task_uuid": str(task.uuid),
        "task_name": task.task_name,
        "queue": task.queue,
        "attempt": task.attempt,
        **more,
    }


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, ``exception`` (the traceback, when there is one), ``stack`` (with
    ``stack_info``) and every ``extra`` field of the record.

    For ``LOGGING["formatters"]``: ``{"json": {"()": "django_qtasks.log.JSONFormatter"}}``.
    Values JSON cannot hold (a request object, say) are written as their ``str()``.
    """

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in data:
                data[key] = value
        return json.dumps(data, default=str, ensure_ascii=False)


__all__ = ["JSONFormatter", "task_fields"]


# manage.py's -v 0..3 as the level of the django_qtasks loggers.
LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


def configure_logging(verbosity: int) -> None:
    """``-v`` sets the level of the ``django_qtasks`` loggers; a handler is added only
    when the project's LOGGING set none, so Django's own configuration wins."""
    logger = logging.getLogger("django_qtasks")
    logger.setLevel(LEVELS.get(verbosity, logging.DEBUG))
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
