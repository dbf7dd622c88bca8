"""``python manage.py qtasks_status``: queues, workers and recent failures; ``--check``
for probes and cron monitors (docs/operations.md)."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from django_qtasks.contrib.status import DEFAULT_WINDOW, Status, read_status


def _queues(value: str) -> list[str]:
    return [q.strip() for q in value.split(",") if q.strip()]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{round(seconds, 1):g} s"
    if seconds < 7200:
        return f"{round(seconds / 60, 1):g} min"
    return f"{round(seconds / 3600, 1):g} h"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell; numbers (all but the first column) right."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        parts = [first.ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)
        ]
        return "  " + "  ".join(parts).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def render(status: Status, problems: list[str]) -> str:
    """The readable form: a queues table, a workers table, the recent failure rate."""
    out = ["Queues"]
    if status.queues:
        out += _table(
            ["queue", "waiting", "ready", "running", "oldest ready", "paused"],
            [
                [q.name, str(q.waiting), str(q.ready), str(q.running), _age(q.oldest_ready_age),
                 "paused" if q.paused else "-"]
                for q in status.queues
            ],
        )  # fmt: skip
        if status.queues_capped:
            out.append("  (a large backlog: counts are lower bounds)")
    else:
        out.append("  (no waiting or running tasks)")
    out.append("Workers")
    if status.workers:
        out += _table(
            ["worker", "host", "pid", "queues", "threads", "running", "heartbeat", "state"],
            [
                [w.id, w.host, str(w.pid or "-"), ",".join(w.queues) if w.queues else "all",
                 str(w.threads or "-"), str(w.running if w.running is not None else "-"),
                 f"{_age(w.heartbeat_age)} ago", "alive" if w.alive else "expired"]
                for w in status.workers
            ],
        )  # fmt: skip
    else:
        out.append("  (no worker)")
    recent = status.recent
    rate = "-" if recent.failure_rate is None else f"{recent.failure_rate:.1%}"
    out.append(
        f"Last {_age(recent.window)}: {recent.finished} finished, {recent.failed} failed "
        f"({rate}), {recent.cancelled} cancelled"
    )
    if problems:
        out.append("Problems")
        out += [f"  {problem}" for problem in problems]
    return "\n".join(out)


class Command(BaseCommand):
    help = (
        "Show the task queue's health: queues, workers and the recent failure rate. "
        "With --check, exit 1 (and say why on stderr) when a queue has no live worker "
        "or has waited too long, or task rows are in a status that is none of the seven."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")
        parser.add_argument(
            "--check",
            action="store_true",
            help="Exit 1 when a queue with ready tasks (or one given with --queue) has no "
            "live worker, or its oldest ready task is older than --max-age, or rows are "
            "in an unknown status; 2 when the database cannot be read.",
        )
        parser.add_argument(
            "--queue",
            dest="queues",
            action="append",
            type=_queues,
            default=None,
            help="Check these queues (comma-separated, repeatable), whether or not they "
            "have tasks waiting (default: every queue with ready tasks).",
        )
        parser.add_argument(
            "--max-age",
            type=float,
            default=None,
            help="Seconds the oldest ready task of a queue may wait (default: no limit).",
        )
        parser.add_argument(
            "--window",
            type=float,
            default=DEFAULT_WINDOW,
            help="Seconds of finished tasks the failure rate covers "
            f"(default: {DEFAULT_WINDOW:g}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        max_age = options["max_age"]
        if max_age is not None and (not math.isfinite(max_age) or not max_age >= 0):
            raise CommandError("--max-age must be 0 seconds or more.")
        if not math.isfinite(options["window"]) or not options["window"] > 0:
            raise CommandError("--window must be more than 0 seconds.")
        queues = [q for group in options["queues"] or () for q in group] or None
        try:
            status = read_status(window=options["window"])
        except DatabaseError as exc:
            self.stderr.write(f"qtasks_status: cannot read the task queue: {exc}")
            sys.exit(2)
        problems = status.problems(queues, options["max_age"])
        if options["json"]:
            self.stdout.write(json.dumps(status.as_dict(problems), indent=2))
        else:
            self.stdout.write(render(status, problems))
        if options["check"] and problems:
            for problem in problems:
                self.stderr.write(f"qtasks_status: {problem}")
            sys.exit(1)
