"""Quick look at our own numbers (no peers): enqueue/s, drain/s, pickup latency.

    python bench/drain_quick.py [--tasks 20000] [--concurrency 32]

The measuring is bench/measure.py's, through bench/ours_driver.py: the same code that
``make bench`` (bench/compare.py) runs for every system, here for ours alone, in one
process and one round.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_URL, fresh_database
from bench.measure import measure_bulk, measure_drain, measure_enqueue, measure_latency
from bench.ours_driver import OursDriver


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--enqueue", type=int, default=3000)
    parser.add_argument("--latency", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    url = os.environ.setdefault("BENCH_DATABASE_URL", DEFAULT_URL)
    driver = OursDriver(["--concurrency", str(args.concurrency)])

    def fresh() -> OursDriver:
        driver.release()
        fresh_database(url)
        driver.prepare()
        return driver

    enqueue = measure_enqueue(fresh(), args.enqueue)["rate"]
    bulk = measure_bulk(fresh(), args.tasks)["rate"]
    drain = measure_drain(fresh(), args.tasks, workers_count=1, timeout=args.timeout, log=None)
    latency = measure_latency(fresh(), args.latency, timeout=args.timeout, log=None)
    driver.release()
    print(
        f"enqueue/s={enqueue:.0f} bulk/s={bulk:.0f} drain/s={drain['rate']:.0f} "
        f"(1 worker, {args.concurrency} threads, {args.tasks} tasks, peak RSS "
        f"{drain['rss_mib']:.0f} MiB) latency p50={latency['p50_ms']:.1f}ms "
        f"p99={latency['p99_ms']:.1f}ms"
    )


if __name__ == "__main__":
    main()
