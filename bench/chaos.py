"""Chaos: run N tasks over several workers while killing one at random every few seconds.

    python bench/chaos.py [--tasks 2000] [--workers 3] [--kill-every 3] [--concurrency 4]

By default this is what a new user gets: plain tasks (``bench.plain``, no ``retry=``)
and the library's settings (``bench/settings_defaults.py``: heartbeats every 5 s, a
worker counts as dead after 30 s). ``--task bench.chaos`` runs the task with
``retry=20`` instead, and ``--tuned`` the quick heartbeats of ``bench/settings.py``.

Each task writes a side-effect row when it runs. At the end the script prints
``tasks=N lost=L duplicated_successes=D``: a task is lost if it did not end
``success`` (whatever it ended as) or left no side effect; D counts side effects beyond
one per task (runs repeated because a worker died mid-task: at-least-once delivery).
Tasks that ended ``error`` are listed by cause. Exit status 1 if anything was lost. It
uses a scratch PostgreSQL database (BENCH_DATABASE_URL, default qtasks_bench on the
local server), dropped and created afresh.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_URL, fresh_database, setup_django, start_worker, stop_workers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--work", type=float, default=0.02, help="seconds each task works")
    parser.add_argument("--task", default="bench.plain", choices=["bench.plain", "bench.chaos"])
    parser.add_argument("--tuned", action="store_true", help="bench/settings.py's heartbeats")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    settings = "bench.settings" if args.tuned else "bench.settings_defaults"
    rng = random.Random(args.seed)

    fresh_database(url)
    setup_django(url, settings)
    from django.db import connection, transaction
    from django.db.models import Count

    from bench.benchapp.models import SideEffect
    from django_qtasks import app
    from django_qtasks.models import TaskRecord

    with transaction.atomic():
        for key in range(args.tasks):
            app.add_task(args.task, key, args.work)
    log = Path(tempfile.mkdtemp(prefix="qtasks-chaos-")) / "workers.log"
    worker_args = ("--concurrency", str(args.concurrency))

    def start() -> object:
        return start_worker(url, *worker_args, log=log, settings=settings)

    workers = [start() for _ in range(args.workers)]
    started = time.monotonic()
    kills = 0
    next_kill = started + args.kill_every
    try:
        while time.monotonic() - started < args.timeout:
            open_tasks = TaskRecord.objects.exclude(status__in=["success", "error", "cancel"])
            remaining = open_tasks.count()
            connection.close()
            if remaining == 0:
                break
            # Kills while the first pass runs: later, only rescued tasks are left, and
            # killing the workers that wait for them would only restart the wait.
            done = TaskRecord.objects.filter(status__in=["success", "error"]).count()
            if time.monotonic() >= next_kill and remaining > args.tasks // 20 and done:
                victim = rng.randrange(len(workers))
                workers[victim].send_signal(signal.SIGKILL)
                workers[victim].wait()
                workers[victim] = start()
                kills += 1
                next_kill = time.monotonic() + args.kill_every
            time.sleep(0.1)  # the script's pace; the workers do not wait on it
    finally:
        stop_workers(workers, timeout=30)
    elapsed = time.monotonic() - started

    statuses = dict(TaskRecord.objects.values_list("status").annotate(n=Count("uuid")))
    runs = dict(SideEffect.objects.values_list("key").annotate(n=Count("id")))
    success_keys = {
        task_args[0]
        for task_args in TaskRecord.objects.filter(status="success").values_list("args", flat=True)
    }
    lost = sum(1 for key in range(args.tasks) if key not in success_keys or key not in runs)
    duplicated = sum(n - 1 for n in runs.values() if n > 1)
    causes = Counter(
        f"{errors[-1]['type']}: {errors[-1]['message'][:100]}" if errors else "(no error entry)"
        for errors in TaskRecord.objects.filter(status="error").values_list("errors", flat=True)
    )
    rescued = sum(TaskRecord.objects.values_list("rescues", flat=True))
    print(
        f"# {args.task}, {settings}: {args.workers} workers x {args.concurrency} threads, a "
        f"kill every {args.kill_every:g} s ({kills} kills), {elapsed:.1f} s; statuses "
        f"{statuses}; {rescued} rescues"
    )
    for cause, count in causes.most_common():
        print(f"# error x{count}: {cause}")
    print(f"tasks={args.tasks} lost={lost} duplicated_successes={duplicated}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
