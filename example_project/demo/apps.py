"""The demo's AppConfig: django_qtasks autodiscovers ``tasks.py`` in apps like this one."""

from __future__ import annotations

import logging

from django.apps import AppConfig


def _not_a_poll(record: logging.LogRecord) -> bool:
    request_line = str(record.args[0]) if isinstance(record.args, tuple) and record.args else ""
    return not request_line.startswith("GET /tasks.json")


class DemoConfig(AppConfig):
    name = "example_project.demo"
    label = "demo"
    verbose_name = "django-qtasks demo"

    def ready(self) -> None:
        # The page polls /tasks.json every second; runserver would log each poll and
        # bury the worker's lines, which are the interesting ones in the console.
        logging.getLogger("django.server").addFilter(_not_a_poll)
