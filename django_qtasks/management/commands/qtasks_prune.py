"""``python manage.py qtasks_prune --older-than 7d``: delete old finished tasks."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from django_qtasks import app
from django_qtasks.models import FINISHED_STATUSES
from django_qtasks.storage.retention import parse_age, parse_statuses, prune


def _age(value: str) -> dt.timedelta:
    try:
        return parse_age(value)
    except ValueError as exc:
        raise CommandError(f"--older-than: {exc}") from None


def _statuses(value: str) -> tuple[str, ...]:
    try:
        return parse_statuses(value)
    except ValueError as exc:
        raise CommandError(f"--status: {exc}") from None


class Command(BaseCommand):
    help = (
        "Delete finished tasks (success, error, cancel) that finished longer ago than "
        "--older-than, in short batches. Waiting and running tasks are never touched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            required=True,
            help="Age of the tasks to delete: 7d, 12h, 30m, 45s, 2w, or seconds (3600).",
        )
        parser.add_argument(
            "--status",
            default=",".join(FINISHED_STATUSES),
            help="Comma-separated finished statuses to delete (default: success,error,cancel).",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=1000,
            help="Rows deleted per statement (each its own short transaction). Default 1000.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        older_than = _age(options["older_than"])
        statuses = _statuses(options["status"])
        batch_size = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        verbosity = options["verbosity"]
        before = timezone.now() - older_than
        what = f"{'/'.join(statuses)} tasks finished before {before.isoformat(timespec='seconds')}"
        if options["dry_run"]:
            count = app.broker.storage.count_prunable(before, statuses)
            self.stdout.write(f"Would delete {count} {what} (dry run).")
            return

        def on_batch(deleted: int) -> None:
            if verbosity >= 2:
                self.stdout.write(f"  deleted a batch of {deleted}")

        result = prune(
            app.broker.storage,
            older_than,
            statuses=statuses,
            batch_size=batch_size,
            on_batch=on_batch,
            now=before + older_than,
        )
        self.stdout.write(
            f"Deleted {result.tasks} {what}, in {result.batches} batch(es); "
            f"{result.schedule_runs} old schedule run(s)."
        )
