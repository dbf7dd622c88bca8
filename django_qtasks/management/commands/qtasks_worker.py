"""``python manage.py qtasks_worker``: run a worker until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_qtasks.exceptions import ConfigurationError, InvalidTaskCall
from django_qtasks.log import configure_logging


def _queues(value: str) -> list[str]:
    """``a,b`` -> the names; none at all is an error (it used to mean every queue)."""
    queues = [q.strip() for q in value.split(",") if q.strip()]
    if not queues:
        raise argparse.ArgumentTypeError(f"no queue name in {value!r}")
    return queues


class Command(BaseCommand):
    help = "Run a django-qtasks worker: claim tasks from the database and run them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queues",
            type=_queues,
            default=None,
            help="Comma-separated queues to take tasks from (default: all).",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="Threads running tasks (default: QTASKS['CONCURRENCY']).",
        )
        parser.add_argument(
            "--burst", action="store_true", help="Exit once no task is ready and none is running."
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=None,
            help="Seconds between polls when idle (default: QTASKS['POLL_INTERVAL']).",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=None,
            help="Run tasks in this many child processes (each with --concurrency threads) "
            "under a supervising parent: hard time limits, forced cancel, crash isolation.",
        )
        parser.add_argument(
            "--max-tasks-per-child",
            type=int,
            default=None,
            help="With --processes: replace a child after it has taken this many tasks.",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=None,
            help="Seconds running tasks get to finish on SIGTERM (default: QTASKS['GRACE']).",
        )
        parser.add_argument(
            "--heartbeat-file",
            default=None,
            help="Touch this file on each heartbeat that reached the database, for a "
            "liveness probe that checks its age (default: QTASKS['HEARTBEAT_FILE']).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from django_qtasks import app

        configure_logging(options["verbosity"])
        checks = [
            ("concurrency", 1, "--concurrency must be at least 1."),
            ("processes", 1, "--processes must be at least 1."),
            ("max_tasks_per_child", 1, "--max-tasks-per-child must be at least 1."),
            ("grace", 0, "--grace must be 0 seconds or more."),
        ]
        for key, low, message in checks:
            value = options[key]
            # not (value >= low): NaN fails every comparison, and must fail this one.
            if value is not None and (not math.isfinite(value) or not value >= low):
                raise CommandError(message)
        poll = options["poll_interval"]
        if poll is not None and (not math.isfinite(poll) or not poll > 0):
            raise CommandError("--poll-interval must be more than 0 seconds.")
        if options["max_tasks_per_child"] and not options["processes"]:
            raise CommandError("--max-tasks-per-child needs --processes.")
        try:
            starter = app.build_starter(
                queues=options["queues"],
                concurrency=options["concurrency"],
                burst=options["burst"],
                poll_interval=options["poll_interval"],
                grace=options["grace"],
                processes=options["processes"],
                max_tasks_per_child=options["max_tasks_per_child"],
                verbosity=options["verbosity"],
                worker_options=(
                    {"heartbeat_file": options["heartbeat_file"]}
                    if options["heartbeat_file"]
                    else None
                ),
            )
        except (InvalidTaskCall, ConfigurationError) as exc:  # a bad schedule, too
            raise CommandError(str(exc)) from exc
        worker = starter.worker
        logging.getLogger("django_qtasks.worker").info(
            "Worker %s: queues=%s concurrency=%d processes=%s tasks=%s",
            worker.worker_id,
            ",".join(worker.queues) if worker.queues else "*",
            worker.concurrency,
            options["processes"] or "-",
            ", ".join(task_names(app)) or "(none)",
        )
        code = starter.run()
        if code:
            sys.exit(code)


def task_names(app: Any) -> list[str]:
    """Every task this worker can run by name: the ``@app.task`` ones, then the Django
    ``@task`` ones of the installed apps (when django.tasks, or its backport, is here)."""
    try:
        from django_qtasks.contrib.django_tasks import loaded_task_names
    except ImportError:  # Django 5.2 without the django-tasks backport
        django_names: list[str] = []
    else:
        django_names = loaded_task_names()
    return list(dict.fromkeys([*app.registry.names(), *django_names]))

