"""How every queue in the benchmark is measured: one protocol, one set of timers.

Each system (ours and each peer) has a small driver that subclasses :class:`Driver` and
calls :func:`main`. A driver runs in its own system's virtualenv, so this module uses the
standard library only. The protocol, one JSON line on stdout per call::

    driver.py enqueue N            single enqueue calls in autocommit, one client
    driver.py bulk N               the system's bulk API, in one call
    driver.py drain N --workers W  preload N no-op tasks, start W workers, time until all done
    driver.py latency N            idle worker; enqueue, then read the start time the task wrote
    driver.py info                 the worker settings and bulk API, for the table's notes

Workers are started in sessions of their own and carry ``QTASKS_BENCH_RUN`` in their
environment, so whatever ends the driver (normal exit, error, SIGTERM, Ctrl-C) can find
and kill exactly the processes this run started, children included.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARKER = "QTASKS_BENCH_RUN"
POLL = 0.05  # how often a drain checks its done count; the error it adds is below 1 %


class Driver:
    """What a driver tells the shared timers about its system."""

    #: the bulk API's name for the table's notes; None: the system has none.
    bulk_api: str | None = None
    #: the worker settings used, printed under the table.
    settings: str = ""
    #: whether the queue lives in the PostgreSQL database of BENCH_DATABASE_URL.
    uses_database: bool = True

    def prepare(self) -> None:
        """Create the system's schema in the fresh database (or empty its Redis DB)."""

    def enqueue_one(self) -> None:
        raise NotImplementedError

    def enqueue_ways(self) -> dict[str, Callable[[], None]]:
        """The single-enqueue calls to time, by the JSON key of their rate. More than one:
        they take turns in this one process (see :func:`measure_enqueue`)."""
        return {"rate": self.enqueue_one}

    def enqueue_bulk(self, n: int) -> None:
        raise NotImplementedError

    def worker_command(self) -> tuple[list[str], dict[str, str]]:
        """The argv and extra environment of one worker process."""
        raise NotImplementedError

    def done_count(self) -> int:
        """How many no-op tasks have finished (the system's own record of it)."""
        raise NotImplementedError

    def enqueue_stamped(self) -> Any:
        """Enqueue a task that records ``time.time()`` as it starts; return its handle."""
        raise NotImplementedError

    def started_at(self, handle: Any) -> float | None:
        """The start time recorded by the task of ``handle``, or None while not there."""
        raise NotImplementedError

    def release(self) -> None:
        """Close client connections before the workers are timed."""

    def close(self) -> None:
        """Let go of pools and connections at the end of the measurement."""


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- processes ------------------------------------------------------------------------


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(pid: int) -> list[int]:
    children = _proc_children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) spent so far by ``pids`` and all their descendants: the
    live processes' own, plus what their reaped children left in ``cutime``/``cstime``."""
    total = 0
    for pid in pids:
        for current in _tree(pid):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
                total += sum(int(value) for value in fields[11:15])  # utime .. cstime
    return total / _TICKS


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (a prefork pool counts whole)."""
    children = _proc_children()
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def marked_pids(run_id: str) -> list[int]:
    """Processes whose environment carries this run's marker (started by this run)."""
    needle = f"{MARKER}={run_id}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in Path(entry.path, "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def kill_marked(run_id: str) -> int:
    """SIGKILL every process of this run still alive; return how many there were."""
    pids = marked_pids(run_id)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM a process's session, then SIGKILL it if it has not ended within ``grace``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Workers:
    """W worker processes of one system, with their peak resident memory sampled."""

    def __init__(self, driver: Driver, count: int, log: Path | None) -> None:
        argv, extra = driver.worker_command()
        env = {**os.environ, **extra, MARKER: os.environ.get(MARKER, str(os.getpid()))}
        self.procs: list[subprocess.Popen[bytes]] = []
        out = open(log or os.devnull, "ab")  # noqa: SIM115
        try:
            for _ in range(count):
                self.procs.append(
                    subprocess.Popen(
                        argv,
                        cwd=ROOT,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        finally:
            out.close()
        self.peak_rss = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.peak_rss = max([self.peak_rss, *(tree_rss_bytes(p.pid) for p in self.procs)])

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a worker exited early with status {proc.returncode}")

    def stop(self) -> None:
        self._stop.set()
        for proc in self.procs:
            stop_group(proc)


@contextlib.contextmanager
def workers(driver: Driver, count: int, log: Path | None) -> Iterator[Workers]:
    group = Workers(driver, count, log)
    try:
        yield group
    finally:
        group.stop()


# --- measurements ---------------------------------------------------------------------


def rate(n: int, action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return n / (time.perf_counter() - started)


ENQUEUE_TURN = 100  # calls per turn when several ways of enqueueing take turns


def measure_enqueue(driver: Driver, n: int, **_: Any) -> dict[str, Any]:
    """``n`` single enqueue calls per way. Several ways (ours: the database alone,
    ``add_task()``, ``django.tasks`` ``enqueue()``) take turns of ``ENQUEUE_TURN`` calls
    in one process, the order rotating every turn, so that the machine's drift hits
    them alike; each rate is the median of its turns."""
    ways = driver.enqueue_ways()
    if len(ways) == 1:
        [(key, call)] = ways.items()

        def run() -> None:
            for _ in range(n):
                call()

        return {key: rate(n, run)}
    names = list(ways)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(max(1, n // ENQUEUE_TURN)):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            call = ways[name]
            started = time.perf_counter()
            for _ in range(ENQUEUE_TURN):
                call()
            rates[name].append(ENQUEUE_TURN / (time.perf_counter() - started))
    return {name: median(values) for name, values in rates.items()}


def measure_bulk(driver: Driver, n: int, **_: Any) -> dict[str, Any]:
    if driver.bulk_api is None:
        return {"rate": None}
    return {"rate": rate(n, lambda: driver.enqueue_bulk(n)), "api": driver.bulk_api}


def preload(driver: Driver, n: int) -> None:
    if driver.bulk_api is None:
        for _ in range(n):
            driver.enqueue_one()
        return
    for start in range(0, n, 5000):
        driver.enqueue_bulk(min(5000, n - start))


def settle(driver: Driver) -> None:
    """Bring the planner's statistics up to date after a preload, as autovacuum would on
    a normally configured server before long. Some servers (this project's test
    machines among them) run with autovacuum off: a table that went from empty to N
    rows without an ANALYZE gets the plan of an empty table (sort everything, pick the
    first few), which makes every claim of every system scan the whole queue. Each
    system gets the same: a database-wide VACUUM ANALYZE of its own database (ANALYZE
    TABLE of the task table on MariaDB)."""
    url = os.environ.get("BENCH_DATABASE_URL")
    if url and url.startswith("mysql") and driver.uses_database:
        from django.db import connection  # MariaDB: the task table's statistics

        with connection.cursor() as cursor:
            cursor.execute("ANALYZE TABLE django_qtasks_taskrecord")
            cursor.fetchall()
    elif url and driver.uses_database:
        subprocess.run(
            ["psql", url, "-q", "-c", "VACUUM ANALYZE"], check=True, timeout=600,
            capture_output=True,
        )  # fmt: skip


def measure_drain(
    driver: Driver, n: int, *, workers_count: int, timeout: float, log: Path | None
) -> dict[str, Any]:
    preload(driver, n)
    settle(driver)
    if driver.done_count() != 0:
        raise RuntimeError("tasks finished before any worker was started")
    driver.release()
    started = time.perf_counter()
    with workers(driver, workers_count, log) as group:
        pids = [proc.pid for proc in group.procs]
        # CPU per task is counted from the first finished task on: start-up (Django's
        # imports, a pool's children) is not per-task work.
        first: list[tuple[int, float]] = []

        def all_done() -> bool:
            group.check_alive()
            done = driver.done_count()
            if done and not first:
                first.append((done, tree_cpu_seconds(pids)))
            return done >= n

        wait_until(all_done, timeout, POLL, f"{n} tasks to finish")
        elapsed = time.perf_counter() - started
        cpu = tree_cpu_seconds(pids)
        peak = group.peak_rss
    done_then, cpu_then = first[0]
    per_task = (cpu - cpu_then) / (n - done_then) if n > done_then else None
    return {
        "rate": n / elapsed,
        "tasks": n,
        "seconds": elapsed,
        "rss_mib": peak / 2**20,
        "cpu_us": None if per_task is None else per_task * 1e6,
    }


def measure_latency(
    driver: Driver, n: int, *, timeout: float, log: Path | None, **_options: Any
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with workers(driver, 1, log) as group:
        # The first task also waits for the worker to boot; it is not counted.
        handle = driver.enqueue_stamped()
        wait_until(partial(driver.started_at, handle), timeout, 0.01, "the worker to start")
        time.sleep(0.3)  # let the worker go idle: the column is pickup from idle
        samples: list[float] = []
        for _ in range(n):
            before = time.time()
            handle = driver.enqueue_stamped()
            left = deadline - time.monotonic()
            started = wait_until(partial(driver.started_at, handle), left, 0.001, "a task")
            samples.append((started - before) * 1000)
            time.sleep(0.02)  # the next enqueue finds the worker idle again
        group.check_alive()
        rss = tree_rss_bytes(group.procs[0].pid)
    return {
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "rss_end_mib": rss / 2**20,
    }


MEASURES: dict[str, Callable[..., dict[str, Any]]] = {
    "enqueue": measure_enqueue,
    "bulk": measure_bulk,
    "drain": measure_drain,
    "latency": measure_latency,
}


# --- the command line every driver speaks ---------------------------------------------


def _raise_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(make_driver: Callable[[], Driver], argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One benchmark measurement; one JSON line.")
    parser.add_argument("measure", choices=["enqueue", "bulk", "drain", "latency", "info"])
    parser.add_argument("n", type=int, nargs="?", default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--log", type=Path, default=None, help="file for the workers' output")
    args = parser.parse_args(argv)
    os.environ.setdefault(MARKER, f"driver-{os.getpid()}")
    # SIGTERM from the harness (timeout or Ctrl-C) unwinds like an error: workers stop.
    signal.signal(signal.SIGTERM, _raise_on_signal)
    atexit.register(kill_marked_children)
    driver = make_driver()
    if args.measure == "info":
        print(json.dumps({"settings": driver.settings, "bulk_api": driver.bulk_api}))
        return
    try:
        driver.prepare()
        result = MEASURES[args.measure](
            driver, args.n, workers_count=args.workers, timeout=args.timeout, log=args.log
        )
    finally:
        driver.close()
    print(json.dumps(result), flush=True)


def kill_marked_children() -> None:
    """At exit: nothing this driver started may outlive it."""
    run_id = os.environ.get(MARKER)
    if run_id:
        kill_marked(run_id)
