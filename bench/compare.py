"""Our worker against its peers on one PostgreSQL, in one invocation (``make bench``).

    python bench/compare.py [--rounds 3] [--tasks 50000] [--only ours,celery] [--quick]

Systems: django-qtasks (ours), django-tasks-db, procrastinate, Celery with the local
Redis. Each peer runs in its own virtualenv (``bench/peers/setup.sh`` makes them under
.bench/), through a small driver that speaks the protocol of bench/measure.py; each
measurement is one driver process on a fresh database ``qtasks_bench_<system>``.
Measurements are interleaved (every system in turn, in a rotating order, for each
measurement of each round) and the table shows medians over the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_URL, MARIADB_URL, ROOT, fresh_database
from bench.measure import ENQUEUE_TURN, MARKER, kill_marked, median, stop_group

VENVS = ROOT / ".bench"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
RETRY_PAUSE = 10.0


@dataclass
class System:
    name: str
    label: str
    driver: str
    #: share of --tasks that one drain preloads: slow systems drain fewer tasks, so that
    #: each drain lasts seconds, not minutes (the column is a rate either way).
    drain_scale: float
    uses_postgres: bool = True
    #: its scratch databases live on MariaDB (BENCH_MARIADB_URL) instead of PostgreSQL
    mariadb: bool = False
    settings: str = ""
    version: str = ""
    #: the jobs (see jobs_for) this row is measured on; its other columns show "—"
    measures: tuple[str, ...] = ("enqueue", "bulk", "drain1", "drain2", "latency")
    #: extra environment of its driver (which of our rows it is)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        if self.name in OWN_VENV:
            return Path(sys.executable)
        return VENVS / f"venv-{self.name}" / "bin" / "python"


def ours(
    name: str,
    label: str,
    settings: str,
    args: str,
    measures: tuple[str, ...],
    *,
    mariadb: bool = False,
    task: str = "bench.noop",
    drain_scale: float = 1.0,
) -> System:
    env = {"BENCH_OURS_SETTINGS": settings, "BENCH_OURS_ARGS": args, "BENCH_OURS_TASK": task}
    return System(
        name,
        label,
        "bench/ours_driver.py",
        drain_scale,
        measures=measures,
        env=env,
        mariadb=mariadb,
    )


SYSTEMS = [
    # What the README gives: `qtasks_worker` with no flags, no QTASKS key, Django's
    # CONN_MAX_AGE. Every ratio in the table is against this row.
    ours(
        "ours",
        "django-qtasks defaults",
        "bench.settings_defaults",
        "",
        ("enqueue", "bulk", "drain1", "drain2", "latency"),
    ),
    # Tuned for short tasks as docs/performance.md recommends.
    ours(
        "ours-c64",
        "django-qtasks --concurrency 64",
        "bench.settings",
        "--concurrency 64",
        ("drain1", "drain2", "latency"),
    ),
    # Process mode with the default threads: 2 children of 4 threads each. On no-op
    # tasks the database (on the same two cores) is the limit, not the worker.
    ours(
        "ours-p2",
        "django-qtasks --processes 2",
        "bench.settings_defaults",
        "--processes 2",
        ("drain1",),
    ),
    # CPU-bound tasks (bench.spin: pure Python holding the GIL, about 1 ms each), where
    # threads cannot help and processes can: one process, then two of the same threads.
    ours(
        "ours-cpu",
        "django-qtasks defaults, CPU-bound",
        "bench.settings_defaults",
        "",
        ("drain1",),
        task="bench.spin",
        drain_scale=0.3,
    ),
    ours(
        "ours-p2-cpu",
        "django-qtasks --processes 2, CPU-bound",
        "bench.settings_defaults",
        "--processes 2",
        ("drain1",),
        task="bench.spin",
        drain_scale=0.3,
    ),
    # The defaults row again, on MariaDB: what the other database costs (it polls: no
    # LISTEN/NOTIFY there, so idle pickup waits for POLL_INTERVAL, 1 s by default).
    ours(
        "ours-mariadb",
        "django-qtasks defaults, MariaDB",
        "bench.settings_defaults",
        "",
        ("enqueue", "bulk", "drain1", "drain2", "latency"),
        mariadb=True,
    ),
    System("djangotasks", "django-tasks-db", "bench/peers/djangotasks_driver.py", 0.025),
    System("procrastinate", "procrastinate", "bench/peers/procrastinate_driver.py", 0.1),
    System("celery", "Celery + Redis", "bench/peers/celery_driver.py", 0.25, uses_postgres=False),
    # The database's own limit for the enqueue columns: our table, psycopg alone. Its
    # single-enqueue cell comes from the defaults row's driver, where it takes turns
    # with add_task() and enqueue() in one process.
    System("postgres", "PostgreSQL alone", "bench/pg_driver.py", 1.0, measures=("bulk",)),
]
OURS = {"ours", "ours-c64", "ours-p2", "ours-cpu", "ours-p2-cpu", "ours-mariadb"}
OWN_VENV = {*OURS, "postgres"}  # run in our virtualenv
PEER_PACKAGES = {
    "djangotasks": "django-tasks-db",
    "procrastinate": "procrastinate",
    "celery": "celery",
}

# column key, header, format
COLUMNS = [
    ("enqueue", "enqueue/s", "{:,.0f}"),
    ("djenqueue", "django.tasks enqueue/s", "{:,.0f}"),
    ("bulk", "bulk enqueue/s", "{:,.0f}"),
    ("drain1", "drain/s, 1 worker", "{:,.0f}"),
    ("cpu", "worker CPU µs/task", "{:,.0f}"),
    ("drain2", "drain/s, 2 workers", "{:,.0f}"),
    ("p50", "latency p50 ms", "{:.1f}"),
    ("p99", "latency p99 ms", "{:.1f}"),
    ("rss", "worker RSS MiB", "{:.0f}"),
]


@dataclass
class Job:
    """One measurement: a driver command and the columns its JSON line fills."""

    key: str  # the name in System.measures
    measure: str
    n: int
    workers: int = 1
    columns: dict[str, str] = field(default_factory=dict)  # column -> JSON key
    #: cells of other rows it fills: (system, column) -> JSON key
    elsewhere: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class Sizes:
    enqueue: int
    bulk: int
    drain: int
    latency: int


def drain_tasks(system: System, sizes: Sizes) -> int:
    return max(50, int(sizes.drain * system.drain_scale))


def jobs_for(system: System, sizes: Sizes) -> list[Job]:
    drain = drain_tasks(system, sizes)
    columns = {"enqueue": "rate", "djenqueue": "django_tasks_rate"}
    enqueue = Job("enqueue", "enqueue", sizes.enqueue, columns=columns)
    if system.name == "ours":
        enqueue.elsewhere[("postgres", "enqueue")] = "pg_rate"
    drain1 = {"drain1": "rate", "rss": "rss_mib", "cpu": "cpu_us"}
    # Each pickup on MariaDB waits a whole poll (1 s): 20 of them tell as much as 200.
    latency = min(sizes.latency, 20) if system.mariadb else sizes.latency
    return [
        enqueue,
        Job("bulk", "bulk", sizes.bulk, columns={"bulk": "rate"}),
        Job("drain1", "drain", drain, 1, columns=drain1),
        Job("drain2", "drain", drain, 2, columns={"drain2": "rate"}),
        Job("latency", "latency", latency, columns={"p50": "p50_ms", "p99": "p99_ms"}),
    ]


class Failed(Exception):
    pass


class Harness:
    def __init__(self, systems: list[System], timeout: float, url: str) -> None:
        self.systems = systems
        self.timeout = timeout
        self.base_url = url
        self.mariadb_url = os.environ.get("BENCH_MARIADB_URL", MARIADB_URL)
        self.run_id = f"compare-{uuid.uuid4().hex[:12]}"
        self.logs = VENVS / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        #: system -> column -> measured values (None: the system has no such API)
        self.values: dict[str, dict[str, list[float | None]]] = {s.name: {} for s in systems}
        self.failures: dict[str, dict[str, str]] = {s.name: {} for s in systems}

    def url(self, system: System) -> str:
        base = self.mariadb_url if system.mariadb else self.base_url
        name = f"/qtasks_bench_{system.name.replace('-', '_')}"
        return urlparse(base)._replace(path=name).geturl()

    def run_driver(self, system: System, args: list[str]) -> dict[str, Any]:
        """Run one driver command to its JSON line; Failed with the reason otherwise."""
        if not system.python.exists():
            raise Failed(f"{system.python} missing: run bench/peers/setup.sh")
        env = {
            **os.environ,
            **system.env,
            MARKER: self.run_id,
            "BENCH_DATABASE_URL": self.url(system),
            "BENCH_REDIS_URL": REDIS_URL,
        }
        log = self.logs / f"{system.name}.log"
        with open(log, "ab") as err:
            err.write(f"\n== {system.name} {' '.join(args)}\n".encode())
            err.flush()
            proc = subprocess.Popen(
                [
                    str(system.python),
                    system.driver,
                    *args,
                    "--log",
                    str(log),
                    "--timeout",
                    str(max(10.0, self.timeout - 30)),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
            try:
                out, _ = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                stop_group(proc, grace=15)
                raise Failed(f"no answer within {self.timeout:.0f}s (see {log})") from None
            except BaseException:
                stop_group(proc, grace=15)
                raise
            finally:
                kill_marked(self.run_id)
        lines = out.decode().strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise Failed(f"exit {proc.returncode}: {' '.join(tail)} (see {log})")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def describe(self) -> None:
        """Fill each system's settings and version; a system that cannot start fails whole."""
        for system in self.systems:
            try:
                info = self.run_driver(system, ["info"])
                system.settings = info["settings"]
                system.version = self.version_of(system)
            except Failed as exc:
                for key, _header, _fmt in COLUMNS:
                    self.failures[system.name][key] = str(exc)
                print(f"{system.label}: failed: {exc}", file=sys.stderr)

    def version_of(self, system: System) -> str:
        if system.name in OURS:
            from importlib.metadata import version

            return version("django-qtasks")
        if system.name == "postgres":
            return postgres_version(self.base_url).split()[0]
        freeze = VENVS / f"venv-{system.name}" / "freeze.txt"
        package = PEER_PACKAGES[system.name]
        for line in freeze.read_text().splitlines() if freeze.exists() else []:
            if line.lower().startswith(f"{package}=="):
                return line.split("==", 1)[1]
        return "?"

    def measure(self, system: System, job: Job) -> None:
        if len(self.failures[system.name]) == len(COLUMNS):
            return  # did not start at all
        if job.key not in system.measures:
            for column in job.columns:
                self.values[system.name].setdefault(column, []).append(None)
            return
        args = [job.measure, str(job.n), "--workers", str(job.workers)]
        started = time.monotonic()
        for attempt in (1, 2):
            # One retry: on a shared machine a measurement can fail for reasons outside
            # the system measured (PostgreSQL out of connection slots, say).
            try:
                if system.uses_postgres:
                    fresh_database(self.url(system))
                result = self.run_driver(system, args)
                break
            except Exception as exc:  # a failed cell, never a lost table
                reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                print(f"  {system.label} {' '.join(args)}: failed: {reason}", file=sys.stderr)
                if attempt == 1:
                    time.sleep(RETRY_PAUSE)
        else:
            for column in job.columns:
                self.failures[system.name][column] = reason
            return
        for column, key in job.columns.items():
            self.values[system.name].setdefault(column, []).append(result.get(key))
        for (name, column), key in job.elsewhere.items():
            if name in self.values:
                self.values[name].setdefault(column, []).append(result.get(key))
        shown = ", ".join(f"{k}={v:.1f}" for k, v in result.items() if isinstance(v, float))
        print(
            f"  {system.label:16} {' '.join(args):24} {shown} [{time.monotonic() - started:.0f}s]",
            file=sys.stderr,
        )

    def run(self, rounds: int, sizes: Sizes) -> None:
        for number in range(rounds):
            print(f"round {number + 1}/{rounds}", file=sys.stderr)
            # Each measurement runs for every system in turn, the order rotating per round.
            order = (
                self.systems[number % len(self.systems) :]
                + self.systems[: number % len(self.systems)]
            )
            for index in range(len(jobs_for(self.systems[0], sizes))):
                for system in order:
                    self.measure(system, jobs_for(system, sizes)[index])

    def drop_databases(self) -> None:
        for system in self.systems:
            if system.uses_postgres:
                with contextlib.suppress(Exception):
                    fresh_database(self.url(system), create=False)

    # --- the table ----------------------------------------------------------------

    def cell(self, system: System, column: str) -> tuple[str, float | None]:
        values = self.values[system.name].get(column, [])
        numbers = [v for v in values if v is not None]
        if numbers:
            value = median(numbers)
            fmt = next(f for key, _h, f in COLUMNS if key == column)
            partial = "*" if column in self.failures[system.name] else ""
            return fmt.format(value) + partial, value
        if values:
            return "—", None  # measured: the system has no such API
        return ("failed" if column in self.failures[system.name] else "not run"), None

    def table(self) -> str:
        header = ["system", *(h for _k, h, _f in COLUMNS)]
        ours = next((s for s in self.systems if s.name == "ours"), None)
        rows = []
        for system in self.systems:
            row = [f"{system.label} {system.version}".strip()]
            for key, _h, _f in COLUMNS:
                text, value = self.cell(system, key)
                if ours is not None and system is not ours and value is not None:
                    _, base = self.cell(ours, key)
                    if base:
                        text += f" ({value / base:.2f}x)"
                row.append(text)
            rows.append(row)
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)

    def value(self, name: str, column: str) -> float | None:
        system = next((s for s in self.systems if s.name == name), None)
        return None if system is None else self.cell(system, column)[1]

    def goals(self) -> list[str]:
        """The ratios our performance goals are stated in, read off the table above."""
        v = self.value
        celery = [x for x in (v("celery", "drain1"), v("celery", "drain2")) if x]
        checks = [
            (
                "drain, defaults ÷ --concurrency 64",
                v("ours", "drain1"), v("ours-c64", "drain1"), 0.70, "ratio",
            ),
            (
                "drain, defaults ÷ Celery's best (1 or 2 workers)",
                v("ours", "drain1"), max(celery) if celery else None, 5.0, "ratio",
            ),
            (
                "drain CPU-bound, --processes 2 ÷ 1 process (same threads)",
                v("ours-p2-cpu", "drain1"), v("ours-cpu", "drain1"), 1.6, "ratio",
            ),
            (
                "single add_task() ÷ PostgreSQL alone (taking turns)",
                v("ours", "enqueue"), v("postgres", "enqueue"), 0.90, "ratio",
            ),
            (
                "django.tasks enqueue() ÷ PostgreSQL alone (taking turns)",
                v("ours", "djenqueue"), v("postgres", "enqueue"), 0.85, "ratio",
            ),
            ("latency p50 ms, defaults", v("ours", "p50"), 1.0, -3.5, "ms"),
        ]  # fmt: skip
        lines = ["Goals (defaults = django-qtasks defaults row):"]
        for what, top, bottom, target, kind in checks:
            if top is None or not bottom:
                lines.append(f"- {what}: not measured")
                continue
            ratio = top / bottom
            if kind == "ms":
                met = ratio <= -target
                lines.append(f"- {what}: {ratio:.2f} (goal <= {-target:g}) {_verdict(met)}")
            else:
                shown = f"{ratio:.0%}" if target < 1 else f"{ratio:.2f}x"
                goal = f"{target:.0%}" if target < 1 else f"{target:g}x"
                lines.append(f"- {what}: {shown} (goal >= {goal}) {_verdict(ratio >= target)}")
        for what, one, two in (
            ("no-op", "ours", "ours-p2"),
            ("CPU-bound", "ours-cpu", "ours-p2-cpu"),
        ):
            cpu_one, cpu_two = v(one, "cpu"), v(two, "cpu")
            if cpu_one and cpu_two:
                lines.append(
                    f"- worker CPU per {what} task: {cpu_one:,.0f} µs in one process, "
                    f"{cpu_two:,.0f} µs with --processes 2 (parent and children)"
                )
        nop_one, nop_two = v("ours", "drain1"), v("ours-p2", "drain1")
        if nop_one and nop_two:
            lines.append(
                f"- drain no-op, --processes 2 ÷ 1 process: {nop_two / nop_one:.2f}x (the "
                "database on the same cores is the limit there)"
            )
        return lines


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def redis_version(url: str) -> str:
    parts = urlparse(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout=5) as sock:
            sock.sendall(b"INFO server\r\n")
            data = b""
            while b"redis_version" not in data or not data.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return f"unreachable ({exc})"
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("redis_version:"):
            return line.split(":", 1)[1]
    return "?"


def postgres_version(url: str) -> str:
    import psycopg

    try:
        with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres") as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "?"
    except psycopg.Error as exc:
        return f"unreachable ({exc})"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def machine_lines(url: str) -> list[str]:
    return [
        f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
        f"PostgreSQL {postgres_version(url)}, Redis {redis_version(REDIS_URL)}",
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]


def notes(harness: Harness, sizes: Sizes, rounds: int) -> list[str]:
    lines = [
        f"Medians of {rounds} interleaved round(s). Ratio in brackets = row ÷ django-qtasks "
        "defaults (above 1 is better for the row in the rate columns, worse in latency, "
        "CPU and RSS). Our other rows show — in what their worker flags do not change.",
        f"enqueue/s: {sizes.enqueue} single enqueue calls in autocommit from one client; "
        "ours, django.tasks enqueue() on our backend and PostgreSQL alone take turns of "
        f"{ENQUEUE_TURN} calls in one process (the defaults row's driver), the others run "
        "alone. "
        f"bulk enqueue/s: {sizes.bulk} tasks through the system's bulk API in one call "
        "(— where there is none).",
        "drain/s: N no-op tasks preloaded, then VACUUM ANALYZE, timed from starting the "
        "worker processes to the last one done (worker start-up included); the CPU-bound "
        "rows preload bench.spin tasks instead (pure Python, about 1 ms of CPU each).",
        f"latency: {sizes.latency} tasks one after another to an idle worker, from just "
        "before the enqueue call to the time.time() the task itself records on start.",
        "worker CPU: user + system CPU of the worker process and its children per task "
        "during the 1-worker drain, from its first finished task (start-up left out). "
        "worker RSS: peak resident memory of one worker process and its children during "
        "the 1-worker drain.",
        "PostgreSQL alone: the same task table (our migrations) written by psycopg with no "
        "queue library, a prepared one-row INSERT per call and one COPY for bulk: the "
        "database's own limit for the enqueue columns on this machine.",
    ]
    for system in harness.systems:
        reasons = sorted(set(harness.failures[system.name].values()))
        if reasons:
            lines.append(f"{system.label} failed (all rounds: failed, some: *): {reasons[0]}")
    for system in harness.systems:
        drain = f"; drain N={drain_tasks(system, sizes)}" if "drain1" in system.measures else ""
        lines.append(f"- {system.label}: {system.settings or 'did not start'}{drain}")
    return lines


def _interrupt(_signum: int, _frame: Any) -> None:
    """SIGTERM is handled like Ctrl-C: stop the running driver and its workers, report."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tasks",
        type=int,
        default=50000,
        help="tasks per drain for django-qtasks; slower peers drain a share",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated: ours (all our rows), ours-c64, djangotasks, postgres, ...",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round (smoke run)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds one measurement may take (default 600, quick 120)",
    )
    args = parser.parse_args()
    names = [s.name for s in SYSTEMS]
    wanted = [n.strip() for n in args.only.split(",") if n.strip()] or names
    if "ours" in wanted:
        wanted += sorted(OURS)
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(names)}")
    if args.quick:
        sizes, rounds, timeout = Sizes(100, 1000, min(args.tasks, 2000), 20), 1, 120.0
    else:
        sizes, rounds, timeout = Sizes(2000, 10000, args.tasks, 200), args.rounds, 600.0
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    harness = Harness([s for s in SYSTEMS if s.name in wanted], args.timeout or timeout, url)
    signal.signal(signal.SIGTERM, _interrupt)
    command = shlex.join([os.path.relpath(sys.executable, ROOT), *sys.argv])
    header = [f"command: {command}", *machine_lines(url)]
    print("\n".join(header), file=sys.stderr)
    status = 0
    try:
        harness.describe()
        harness.run(rounds, sizes)
    except KeyboardInterrupt:
        status = 130
        print("interrupted: the table below has what was measured", file=sys.stderr)
    except Exception:
        status = 1
        traceback.print_exc()
        print("the harness failed: the table below has what was measured", file=sys.stderr)
    finally:
        kill_marked(harness.run_id)
        harness.drop_databases()
    print("\n".join(header))
    print()
    print(harness.table())
    print()
    print("\n".join(harness.goals()))
    print()
    print("\n".join(notes(harness, sizes, rounds)))
    return status or (1 if any(harness.failures.values()) else 0)


if __name__ == "__main__":
    sys.exit(main())
