"""Scaling out: W worker processes on one PostgreSQL, for W = 1, 2, 4, 8.

    python bench/scale.py [--workers 1,2,4,8] [--tasks 20000] [--concurrency 32] [--quick]

For each W: start W idle ``qtasks_worker`` processes, bulk-enqueue ``--tasks`` no-op
tasks in one commit (a preloaded queue), and time until all have succeeded. Printed
per W: throughput, and the CPU time spent for it, in seconds and per task:

- **DB CPU**: user + system time of the PostgreSQL backends serving the benchmark's
  database (their pids from ``pg_stat_activity``, their times from ``/proc/<pid>/stat``),
  between the enqueue's commit and the last success. The benchmark's own connection and
  PostgreSQL's shared processes (WAL writer, checkpointer) are left out. It needs the
  server on this machine and /proc readable (root, or the postgres user); else "n/a".
- **worker CPU**: the same, for the W worker processes.

It uses a scratch PostgreSQL database (BENCH_DATABASE_URL, default qtasks_scale on the
local server), dropped and created afresh. Workers run with the default heartbeat
settings, as in production.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_URL, fresh_database, setup_django, start_worker, stop_workers

TICKS = os.sysconf("SC_CLK_TCK")
# A database of its own, so that it can run beside the other benchmarks.
SCALE_URL = DEFAULT_URL.rsplit("/", 1)[0] + "/qtasks_scale"


class Result(NamedTuple):
    seconds: float
    db_cpu: float | None  # None: the backends' /proc entries could not be read
    worker_cpu: float


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """utime + stime of each process still there (pids that are gone are left out)."""
    times = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            times[pid] = (int(fields[11]) + int(fields[12])) / TICKS
    return times


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two samples; a process born in between counts from zero."""
    return sum(total - before.get(pid, 0.0) for pid, total in after.items())


def run(url: str, workers: int, tasks: int, concurrency: int) -> Result:
    from django.db import connection

    from django_qtasks import app
    from django_qtasks.models import TaskRecord

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {TaskRecord._meta.db_table}")
        cursor.execute("SELECT pg_backend_pid(), current_database()")
        own_pid, database = cursor.fetchone()

    def backends() -> list[int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                [database, own_pid],
            )
            return [pid for (pid,) in cursor.fetchall()]

    args = ("--concurrency", str(concurrency), "-v", "0")
    procs = [start_worker(url, *args) for _ in range(workers)]
    try:
        pids = {proc.pid for proc in procs}
        while not pids <= {info.get("pid") for info in app.broker.live_workers().values()}:
            if any(proc.poll() is not None for proc in procs):
                raise SystemExit("a worker died while starting")
            time.sleep(0.05)
        db_before, workers_before = cpu_seconds(backends()), cpu_seconds(pids)
        app.add_tasks([("bench.noop", (), {})] * tasks)
        started = time.perf_counter()
        with connection.cursor() as cursor:
            # What autovacuum does soon after such a burst (this server may run without
            # it): statistics that still describe a table of finished rows make each
            # claim sort the whole queue instead of reading the claim index in order.
            cursor.execute(f"ANALYZE {TaskRecord._meta.db_table}")
        done = TaskRecord.objects.filter(status="success")
        while done.count() < tasks:
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        db_after, workers_after = cpu_seconds(backends()), cpu_seconds(pids)
    finally:
        stop_workers(procs)
    db = spent(db_before, db_after) if db_after else None
    return Result(elapsed, db, spent(workers_before, workers_after))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4,8", help="comma-separated worker counts")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per worker count")
    parser.add_argument("--concurrency", type=int, default=32, help="threads per worker")
    parser.add_argument("--quick", action="store_true", help="2,000 tasks, W = 1, 2, 4")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.workers = 2_000, "1,2,4"
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    url = os.environ.get("BENCH_DATABASE_URL", SCALE_URL)
    production = {
        "BENCH_HEARTBEAT_INTERVAL": "5",
        "BENCH_HEARTBEAT_TIMEOUT": "30",
        "BENCH_RESCUE_INTERVAL": "15",
    }
    for name, value in production.items():
        os.environ.setdefault(name, value)

    fresh_database(url)
    setup_django(url)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        (server,) = cursor.fetchone()
    print(
        f"# {os.cpu_count()} CPUs, PostgreSQL {server}, Python {platform.python_version()}; "
        f"{args.tasks} no-op tasks per row, workers with --concurrency {args.concurrency}"
    )
    print(
        f"{'W':>3} {'threads':>7} {'seconds':>8} {'tasks/s':>8} "
        f"{'DB CPU s':>9} {'DB ms/task':>10} {'worker CPU s':>12} {'worker ms/task':>14}"
    )
    for workers in counts:
        seconds, db, cpu = run(url, workers, args.tasks, args.concurrency)
        db_cells = (
            f"{db:>9.1f} {db * 1000 / args.tasks:>10.2f}" if db is not None else f"{'n/a':>20}"
        )
        print(
            f"{workers:>3} {workers * args.concurrency:>7} {seconds:>8.1f} "
            f"{args.tasks / seconds:>8.0f} {db_cells} "
            f"{cpu:>12.1f} {cpu * 1000 / args.tasks:>14.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
