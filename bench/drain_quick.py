"""Quick look at our own numbers (no peers): enqueue/s, drain/s, pickup latency.

    python bench/drain_quick.py [--tasks 20000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_URL, fresh_database, setup_django, start_worker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--enqueue", type=int, default=3000)
    parser.add_argument("--latency", type=int, default=200)
    args = parser.parse_args()
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    fresh_database(url)
    setup_django(url)
    from django.db import connection

    from django_qtasks import app
    from django_qtasks.models import TaskRecord

    t0 = time.perf_counter()
    for _ in range(args.enqueue):
        app.add_task("bench.noop")
    enqueue_rate = args.enqueue / (time.perf_counter() - t0)
    if hasattr(app, "add_tasks"):
        t0 = time.perf_counter()
        app.add_tasks([("bench.noop", (), {})] * (args.tasks - args.enqueue))
        bulk_rate = (args.tasks - args.enqueue) / (time.perf_counter() - t0)
    else:
        bulk_rate = float("nan")
        for _ in range(args.tasks - args.enqueue):
            app.add_task("bench.noop")
    connection.close()
    t0 = time.perf_counter()
    proc = start_worker(url, "--concurrency", str(args.concurrency), "--burst", "-v", "0")
    proc.wait()
    drain = args.tasks / (time.perf_counter() - t0)
    done = TaskRecord.objects.filter(status="success").count()

    proc = start_worker(url, "--concurrency", str(args.concurrency), "-v", "0")
    time.sleep(2)  # let the worker start and go idle
    lat = []
    for _ in range(args.latency):
        before = time.time()
        task = app.add_task("bench.noop")
        while True:
            row = TaskRecord.objects.filter(uuid=task.uuid).values_list("started_at", flat=True)[0]
            if row:
                break
            time.sleep(0.0005)
        lat.append((row.timestamp() - before) * 1000)
        time.sleep(0.01)
    proc.terminate()
    proc.wait()
    lat.sort()
    print(
        f"enqueue/s={enqueue_rate:.0f} bulk/s={bulk_rate:.0f} drain/s={drain:.0f} "
        f"(ok {done}/{args.tasks}) latency p50={statistics.median(lat):.1f}ms "
        f"p99={lat[int(len(lat) * 0.99) - 1]:.1f}ms"
    )


if __name__ == "__main__":
    main()
