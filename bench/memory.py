"""Does a worker's memory stay flat over a long run?

    python bench/memory.py [--tasks 200000] [--concurrency 64] [--samples 10]

Preloads ``--tasks`` no-op tasks, starts one worker and reads its resident set size
(``VmRSS``) each time another tenth of the tasks is done. The first sample is taken
after the first tenth (imports, connections and thread stacks are in place by then);
growth is the last sample against that one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_URL, fresh_database, setup_django, start_worker
from bench.flat_claim import preload


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def waiting() -> int:
    """Waiting rows, counted through the partial claim index (cheap at any size)."""
    from django_qtasks.models import TaskRecord

    return TaskRecord.objects.filter(status__in=["new", "retry"]).count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    fresh_database(url)
    setup_django(url)
    preload(args.tasks)

    worker = start_worker(url, "--concurrency", str(args.concurrency), "--burst", "-v", "0")
    step = args.tasks // args.samples
    samples: list[tuple[int, int]] = []
    started = time.perf_counter()
    try:
        # Samples at 1/10 .. 9/10: at 10/10 the burst worker is already on its way out.
        for n in range(1, args.samples):
            while worker.poll() is None and args.tasks - waiting() < n * step:
                time.sleep(0.05)  # a benchmark's polling loop, not a test's synchronisation
            if worker.poll() is not None:
                break
            samples.append((args.tasks - waiting(), rss_kib(worker.pid)))
            print(f"done {samples[-1][0]:>8,}  rss {samples[-1][1] / 1024:7.1f} MiB", flush=True)
    finally:
        worker.wait()
    elapsed = time.perf_counter() - started
    first, last = samples[0][1], samples[-1][1]
    growth = (last - first) / first * 100
    verdict = "flat (within 10%)" if growth <= 10 else "GROWING"
    print(f"{args.tasks:,} tasks in {elapsed:.1f}s; rss {first / 1024:.1f} -> {last / 1024:.1f} "
          f"MiB ({growth:+.1f}%) -> {verdict}")


if __name__ == "__main__":
    main()
