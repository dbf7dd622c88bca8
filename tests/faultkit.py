"""Real faults for the fault tests: a PostgreSQL server of the test's own (to restart),
network namespaces (to cut one worker host off), worker processes on either, and the
tally of how a drain ended. Nothing here is a mock: servers, links and processes are
real, and the tests skip with a reason where the machine cannot give them.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest

from django_qtasks.models import ConfigEntry, TaskRecord
from tests.helpers import kill_all
from tests.testapp.models import Execution

ROOT = Path(__file__).resolve().parent.parent
TASKS = TaskRecord._meta.db_table
EXECUTIONS = Execution._meta.db_table
CONFIG = ConfigEntry._meta.db_table
#: Where each fault test's summary line goes, besides the test's own output (which
#: pytest shows only with ``-s``): ``-`` or ``1`` is the terminal (the lines are listed
#: at the end of pytest's output, see tests/conftest.py), any other value a file the
#: lines are appended to.
REPORT = os.environ.get("QTASKS_FAULT_REPORT", "")
TO_TERMINAL = REPORT in ("-", "1")
#: The lines for the terminal that the current test reported, not yet handed to pytest.
REPORTED: list[str] = []


def pg_bindir() -> Path | None:
    """The directory of PostgreSQL's server programs: ``pg_config --bindir`` (Debian's
    packages put ``initdb`` and ``pg_ctl`` there), else the newest
    /usr/lib/postgresql/*/bin."""
    candidates = []
    try:
        found = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        candidates.append(Path(found))
    except (OSError, subprocess.CalledProcessError):
        pass
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_postgres(command: Sequence[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user."""
    if os.geteuid() != 0:
        return list(command)
    return ["runuser", "-u", "postgres", "--", *command]


class PrivatePostgres:
    """A PostgreSQL server that only this test uses: ``initdb`` into a temporary
    directory, ``pg_ctl start`` on a free port, listening on ``hosts``; stopped and
    deleted at the end. Trust authentication: it is reachable only from this machine's
    loopback and the test's own veth links."""

    def __init__(self, hosts: Sequence[str] = ("127.0.0.1",)) -> None:
        bindir = pg_bindir()
        if bindir is None:
            pytest.skip("no PostgreSQL server programs (initdb, pg_ctl) on this machine")
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root, and there is no 'postgres' user to run a server")
        self.bindir = bindir
        self.hosts = list(hosts)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="qtasks-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        if os.geteuid() == 0:
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)

    def url(self, host: str | None = None) -> str:
        return f"postgres://root@{host or self.hosts[0]}:{self.port}/qtasks"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                          str(self.log), "-w", "-t", "60", *args]),
            check=True, capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        subprocess.run(
            _as_postgres([str(self.bindir / "initdb"), "-D", str(self.data), "--auth=trust",
                          "--username=root", "--encoding=UTF8", "--no-sync"]),
            check=True, capture_output=True,
        )  # fmt: skip
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write("host all all 0.0.0.0/0 trust\n")
        options = {
            "port": str(self.port),
            "listen_addresses": ",".join(self.hosts),
            "unix_socket_directories": str(self.dir),
            "fsync": "off",  # a test server: no machine crash to survive
            "max_connections": "200",
            # A worker cut off mid-transaction must not keep row locks for long.
            "idle_in_transaction_session_timeout": "2s",
        }
        self._pg_ctl("start", "-o", " ".join(f"-c {k}={v}" for k, v in options.items()))
        with psycopg.connect(self.url().replace("/qtasks", "/postgres"), autocommit=True) as c:
            c.execute("CREATE DATABASE qtasks")

    def restart(self, mode: str) -> None:
        """``pg_ctl restart -m fast`` (sessions ended cleanly) or ``-m immediate`` (no
        shutdown checkpoint: crash recovery at the start)."""
        self._pg_ctl("restart", "-m", mode)

    def stop(self) -> None:
        with suppress(subprocess.CalledProcessError):  # not running
            self._pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on a fresh connection; while the server restarts, wait for
        it (a deadline, not a sleep)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(self.url("127.0.0.1"), autocommit=True) as conn:
                    cursor = conn.execute(sql, params)  # type: ignore[arg-type]
                    return cursor.fetchall() if cursor.description else []
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


class Site:
    """The test project (tests.settings) on a database of its own: migrate it, enqueue
    tasks and run workers there, as a deployment would."""

    def __init__(self, database_url: str, tmp_path: Path, settings: dict[str, Any] | None = None):
        self.database_url = database_url
        self.tmp_path = tmp_path
        self.settings = settings or {}
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, database_url: str | None = None, **more: str) -> dict[str, str]:
        env = {
            **os.environ,
            "DATABASE_URL": database_url or self.database_url,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "QTASKS_TEST_SETTINGS": json.dumps(self.settings),
            **more,
        }
        env.pop("QTASKS_TEST_DB_NAME", None)
        return env

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=ROOT, env=self.env(), capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def migrate(self) -> None:
        self.manage("migrate", "-v", "0")

    def enqueue(self, count: int, *, prefix: str = "k", seconds: float = 0.02,
                queue: str = "default", task: str = "tests.work",
                priority: int = 0) -> list[str]:  # fmt: skip
        """``count`` plain tasks (keys ``prefix0``...), in one transaction; their keys."""
        keys = [f"{prefix}{n}" for n in range(count)]
        code = (
            "from django.db import transaction\n"
            "from django_qtasks import app\n"
            "with transaction.atomic():\n"
            f"    for key in {keys!r}:\n"
            f"        app.add_task({task!r}, key, {seconds!r}, queue={queue!r}, "
            f"priority={priority!r})\n"
        )
        self.manage("shell", "-c", code)
        return keys

    def start_worker(self, *args: str, log: Path, prefix: Sequence[str] = (),
                     database_url: str | None = None,
                     env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
        """A real ``qtasks_worker``; ``prefix`` runs it elsewhere (``ip netns exec``),
        ``env`` adds to its environment."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "django", "qtasks_worker", *args],
                cwd=ROOT, env=self.env(database_url, **(env or {})), stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        kill_all(self.procs)


class NetworkHost:
    """A worker "host": a network namespace of its own, linked to this one by a veth
    pair (``10.213.N.1`` here, ``10.213.N.2`` there). Its link can be taken down and
    brought back: a network partition of that host, and of nothing else."""

    def __init__(self, number: int) -> None:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            pytest.skip("network namespaces need root and iproute2 (ip)")
        tag = f"{os.getpid() % 10000}x{number}"
        self.name = f"qtasks-{tag}"
        self.outer = f"qto{tag}"[:15]
        self.inner = f"qti{tag}"[:15]
        subnet = 10 + (os.getpid() + number) % 240
        self.host_address = f"10.213.{subnet}.1"
        self.address = f"10.213.{subnet}.2"
        self.prefix = ["ip", "netns", "exec", self.name]

    def _ip(self, *args: str, inside: bool = False) -> None:
        command = [*self.prefix, "ip", *args] if inside else ["ip", *args]
        subprocess.run(command, check=True, capture_output=True)

    def create(self) -> None:
        try:
            self._ip("netns", "add", self.name)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"network namespaces are not available here: {exc.stderr!r}")
        self._ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        self._ip("link", "set", self.inner, "netns", self.name)
        self._ip("addr", "add", f"{self.host_address}/24", "dev", self.outer)
        self._ip("link", "set", self.outer, "up")
        self._ip("addr", "add", f"{self.address}/24", "dev", self.inner, inside=True)
        self._ip("link", "set", self.inner, "up", inside=True)
        self._ip("link", "set", "lo", "up", inside=True)

    def cut(self) -> None:
        self._ip("link", "set", self.outer, "down")

    def heal(self) -> None:
        self._ip("link", "set", self.outer, "up")

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@contextmanager
def private_site(
    tmp_path: Path, *, hosts: Sequence[str] = ("127.0.0.1",), settings: dict[str, Any] | None = None
) -> Iterator[tuple[PrivatePostgres, Site]]:
    """A private PostgreSQL server with the test project migrated on it."""
    server = PrivatePostgres(hosts)
    site = Site(server.url("127.0.0.1"), tmp_path, settings)
    try:
        server.start()
        site.migrate()
        yield server, site
    finally:
        site.stop_all()
        server.stop()


def tally(statuses: dict[str, str], runs: dict[str, int], keys: Sequence[str]) -> dict[str, int]:
    """How a drain ended, from each task's status (by key) and how often each key ran:
    tasks, success, error, other (not finished), duplicated (extra runs: at-least-once
    allows them, they are counted) and unproven (a success without its side effect,
    which must never happen)."""
    ended = [statuses.get(key, "missing") for key in keys]
    return {
        "tasks": len(keys),
        "success": ended.count("success"),
        "error": ended.count("error"),
        "other": sum(1 for status in ended if status not in {"success", "error"}),
        "duplicated": sum(max(0, runs.get(key, 0) - 1) for key in keys),
        "unproven": sum(
            1
            for key, status in zip(keys, ended, strict=True)
            if status == "success" and not runs.get(key)
        ),
    }


def report(name: str, numbers: dict[str, Any]) -> str:
    """Print the fault test's summary line (shown with ``-s``) and send it where
    ``$QTASKS_FAULT_REPORT`` says (see REPORT)."""
    line = f"FAULT {name}: " + " ".join(f"{key}={value}" for key, value in numbers.items())
    print(line)
    if TO_TERMINAL:
        REPORTED.append(line)
    elif REPORT:
        with open(REPORT, "a") as out:
            out.write(line + "\n")
    return line


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
