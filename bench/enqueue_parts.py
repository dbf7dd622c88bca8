"""Where a single enqueue's time goes beyond the database's own: one client, autocommit.

    python bench/enqueue_parts.py [--calls 500] [--rounds 12] [--async-commit]

Four ways to put one no-op task row into a fresh task table (our migrations: its
indexes and wake-up trigger), taking turns in every round so that the machine's drift
hits them alike. Printed: the median microseconds per call and the rate, each against
the first,

    database alone   bench/pg_driver.py's row: psycopg, prepared, 4 parameters
    our statement    our prepared INSERT of the same row (9 parameters), from psycopg
    Django's cursor  the same, through the cursor add_task() uses
    add_task()       the whole call: validation, encoding, snapshot, signal
    enqueue()        django.tasks' Task.enqueue() on our backend (its validation,
                     the TaskResult it returns, Django's task_enqueued signal)

Each step down adds one layer, so the differences are what each layer costs.
``--async-commit`` sets ``synchronous_commit = off`` on both connections: the disk's
flush then leaves the comparison, which shows the layers more sharply.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_URL, fresh_database
from bench.pg_driver import PostgresDriver


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500, help="calls per way per round")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--async-commit", action="store_true")
    args = parser.parse_args()
    url = os.environ.setdefault("BENCH_DATABASE_URL", DEFAULT_URL)
    fresh_database(url)
    alone = PostgresDriver()
    alone.prepare()  # migrates; its own psycopg connection

    from django.db import connection
    from django.utils import timezone

    from django_qtasks import app
    from django_qtasks.storage.rows import _new_rows, pg_insert_one

    if args.async_commit:
        alone.conn.execute("SET synchronous_commit = off")
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = off")
    spec = app.build_spec("bench.noop", (), {})
    storage = app.broker.storage

    def row() -> tuple[object, ...]:
        return next(_new_rows([spec], timezone.now()))[1]

    ways: dict[str, Callable[[], object]] = {
        "database alone": alone.enqueue_one,
        "our statement": lambda: alone.conn.execute(*pg_insert_one(row()), prepare=True),
        "Django's cursor": lambda: storage._insert_one(connection, row()),
        "add_task()": lambda: app.add_task("bench.noop"),
    }
    try:
        from bench.benchapp.tasks import django_noop
    except ImportError:  # no django.tasks (Django 5.2 without the backport)
        pass
    else:
        ways["enqueue()"] = django_noop.enqueue
    names = list(ways)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            call = ways[name]
            started = time.perf_counter()
            for _ in range(args.calls):
                call()
            times[name].append((time.perf_counter() - started) / args.calls * 1e6)
    alone.close()
    commit = "synchronous_commit off" if args.async_commit else "synchronous_commit on"
    print(f"{args.rounds} rounds of {args.calls} calls each, {commit}; medians:")
    base = statistics.median(times[names[0]])
    for name in names:
        us = statistics.median(times[name])
        print(
            f"  {name:16s} {us:7.1f} us  {1e6 / us:7,.0f}/s  "
            f"{us - base:+6.1f} us  {base / us:6.1%} of the database alone's rate"
        )


if __name__ == "__main__":
    main()
