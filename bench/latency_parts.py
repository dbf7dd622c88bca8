"""Where pickup latency goes: one idle worker, tasks enqueued one after another.

    python bench/latency_parts.py [--tasks 300] [--concurrency 64]

The worker runs in a process of its own with three probes: when the LISTEN wait returns
(woken by the NOTIFY), when the claim returns the task, and when a thread starts it.
Each task records ``time.time()`` as it starts, as in ``make bench``. Printed: p50 and
p90 of each part,

    enqueue   add_task() from call to return (the INSERT and its commit)
    notify    from add_task()'s return to the worker waking (negative: woken before it)
    claim     from waking to the claim's rows in hand (Python, round trip, the statement)
    handoff   from the claim to a thread starting the task (queue and GIL)
    start     from the thread starting to the task's first line (the executor)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_URL, fresh_database, setup_django, worker_env

PARTS = ("enqueue", "notify", "claim", "handoff", "start", "total")


def probed_worker(concurrency: int, out: str) -> None:
    """The worker's side: qtasks_worker with the probes, dumping them on SIGUSR1."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    django.setup()
    from django.core.management import call_command

    from django_qtasks.broker import listener
    from django_qtasks.storage import django_storage
    from django_qtasks.worker import worker
    events: list[tuple[str, float]] = []

    def probe(cls: Any, name: str, event: str, when_result: bool = True) -> None:
        original = getattr(cls, name)

        def probed(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            if result or not when_result:
                events.append((event, time.time()))
            return result

        setattr(cls, name, probed)

    probe(listener.Listener, "wait", "woke")
    probe(django_storage.DjangoStorage, "claim", "claimed")
    original_process = worker.ThreadWorker.process

    def process(self: Any, task: Any) -> None:
        events.append(("process", time.time()))
        original_process(self, task)

    worker.ThreadWorker.process = process  # type: ignore[method-assign]

    def dump(*_: Any) -> None:
        Path(out).write_text(json.dumps(events))
        os._exit(0)

    signal.signal(signal.SIGUSR1, dump)
    call_command("qtasks_worker", "--concurrency", str(concurrency), "-v", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # the probed worker's own run
    args = parser.parse_args()
    if args.worker:
        probed_worker(args.concurrency, args.worker)
        return
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    fresh_database(url)
    setup_django(url)
    from django_qtasks import app
    from django_qtasks.models import TaskRecord

    def started(uuid: Any) -> float:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = TaskRecord.objects.filter(uuid=uuid, status="success").values_list(
                "returning", flat=True
            )
            if rows:
                return float(rows[0])
            time.sleep(0.002)
        raise SystemExit("a task did not run within 30 s")

    out = str(Path(tempfile.mkdtemp(prefix="qtasks-latency-")) / "events.json")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", out, "--concurrency", str(args.concurrency)],
        env={**os.environ, **worker_env(url)},
    )
    try:
        started(app.add_task("bench.stamp").uuid)  # the worker is up
        time.sleep(0.3)  # and idle
        runs = []
        for _ in range(args.tasks):
            before = time.time()
            task = app.add_task("bench.stamp")
            returned = time.time()
            runs.append((before, returned, started(task.uuid)))
            time.sleep(0.02)  # idle again before the next one
    finally:
        proc.send_signal(signal.SIGUSR1)
        proc.wait(timeout=30)
    events = json.loads(Path(out).read_text())
    Path(out).unlink()
    Path(out).parent.rmdir()
    parts: dict[str, list[float]] = {part: [] for part in PARTS}
    for before, returned, start in runs:
        seen: dict[str, float] = {}
        for event, at in events:
            if before <= at <= start + 0.001:
                seen.setdefault(event, at)
        if len(seen) < 3:
            continue  # woken by something else first (a heartbeat's claim, say)
        parts["enqueue"].append(returned - before)
        parts["notify"].append(seen["woke"] - returned)
        parts["claim"].append(seen["claimed"] - seen["woke"])
        parts["handoff"].append(seen["process"] - seen["claimed"])
        parts["start"].append(start - seen["process"])
        parts["total"].append(start - before)
    print(f"{len(parts['total'])} of {args.tasks} tasks with every probe; ms:")
    for part, values in parts.items():
        values.sort()
        p90 = values[int(0.9 * len(values))] if values else 0.0
        p50 = statistics.median(values) if values else 0.0
        print(f"  {part:8} p50 {1000 * p50:6.2f}  p90 {1000 * p90:6.2f}")


if __name__ == "__main__":
    main()
