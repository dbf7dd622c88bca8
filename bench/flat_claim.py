"""Does the claim stay cheap when the table holds a million finished rows?

    python bench/flat_claim.py [--finished 1000000] [--tasks 50000] [--concurrency 64]

Drains a preloaded queue on an empty table, then loads ``--finished`` finished rows
(success, error and cancel, spread over 30 days, as a busy site keeps them until
pruning) and drains the same queue again. The claim reads only waiting rows through
the partial claim index, so the two rates should be within noise of each other; the
script prints both, their ratio, and the claim's plan on the full table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_URL, fresh_database, setup_django, start_worker

if TYPE_CHECKING:
    from django_qtasks.api.task import Outcome


def preload(tasks: int) -> None:
    from django.db import connection

    from django_qtasks import app

    for start in range(0, tasks, 5000):
        app.add_tasks([("bench.noop", (), {})] * min(5000, tasks - start))
    vacuum()
    connection.close()


def vacuum() -> None:
    """Autovacuum may be off (it is on some test servers): keep the statistics true."""
    from django.db import connection

    from django_qtasks.models import TaskRecord

    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {TaskRecord._meta.db_table}")


def drain(url: str, tasks: int, concurrency: int) -> float:
    preload(tasks)
    started = time.perf_counter()
    worker = start_worker(url, "--concurrency", str(concurrency), "--burst", "-v", "0")
    if worker.wait() != 0:
        raise SystemExit(f"the worker exited with {worker.returncode}")
    return tasks / (time.perf_counter() - started)


def load_finished(rows: int) -> None:
    """Finished rows straight from SQL: a million ORM inserts would take minutes."""
    from django.db import connection

    from django_qtasks.models import TaskRecord

    table = TaskRecord._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {table} (uuid, task_name, queue, priority, status, args, kwargs,
                "returning", traceback, errors, attempt, max_retries, run_after, created_at,
                updated_at, started_at, finished_at, worker_id, unique_key,
                cancel_requested, progress, tags)
            SELECT gen_random_uuid(), 'bench.noop', 'default', 0,
                (ARRAY['success', 'success', 'success', 'error', 'cancel'])[1 + mod(n, 5)],
                '[]', '{{}}', 'null', '', '[]', 1, 0, at, at, at, at, at, 'w-old', NULL,
                FALSE, NULL, '[]'
            FROM (SELECT n, now() - mod(n, 2592000) * interval '1 second' AS at
                  FROM generate_series(1, %s) AS n) AS s
            """,
            [rows],
        )
    vacuum()


def claim_plan() -> str:
    """The plan of the claim statement the library runs (taken from the wire)."""
    from django.db import connection

    from django_qtasks import app

    seen: list[tuple[str, list[Any]]] = []

    def spy(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        if "RETURNING" in sql and sql.lstrip().upper().startswith("WITH"):
            seen.append((sql, list(params)))
        return execute(sql, params, many, context)

    app.add_task("bench.noop")
    with connection.execute_wrapper(spy):
        claimed = app.broker.storage.claim("w-plan", None, 1)
    app.broker.storage.finish_many([(task, _success()) for task in claimed])
    sql, params = seen[0]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def _success() -> Outcome:
    from django_qtasks.api.task import Outcome

    return Outcome(status="success")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    fresh_database(url)
    setup_django(url)

    empty = drain(url, args.tasks, args.concurrency)
    print(f"empty table:            drain {empty:8.0f} tasks/s", flush=True)
    load_finished(args.finished)
    full = drain(url, args.tasks, args.concurrency)
    print(f"{args.finished:>9,} finished rows: drain {full:8.0f} tasks/s", flush=True)
    change = (full - empty) / empty * 100
    verdict = "flat (within 15%)" if abs(change) <= 15 else "NOT flat"
    print(f"change: {change:+.1f}% -> {verdict}")
    print("claim plan with the finished rows:")
    print(claim_plan())


if __name__ == "__main__":
    main()
