"""A real PgBouncer in transaction mode in front of the test database.

``scripts/ensure-pgbouncer.sh`` (run by ``make test``) installs Debian's package; each
test module starts its own ``pgbouncer`` process on a free port with an ini file of its
own, and stops it at the end. Without the binary the tests skip, except under ``CI``,
where they fail: a pooler that silently never ran proves nothing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection

from tests.conftest import WorkerProcesses
from tests.helpers import wait_until
from tests.settings import through_pooler

# Fewer server connections than the worker and the test open together, so that clients
# really share server sessions, as they do in production.
POOL_SIZE = 4
# One [databases] entry whose pool has a single server connection: two clients on it
# always land on the same server session (the prepared-statement test needs that).
SINGLE = "qtasks_single"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _unavailable(why: str) -> None:
    message = f"PgBouncer cannot run here: {why} (scripts/ensure-pgbouncer.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class PgBouncer:
    """One ``pgbouncer`` process and its files in ``workdir``."""

    def __init__(self, binary: str, workdir: Path, database: dict[str, Any]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.database = database
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "pgbouncer.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        db = self.database
        server = f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432}"
        user, password = db["USER"] or "postgres", db["PASSWORD"] or ""
        userlist = self.workdir / "userlist.txt"
        # The server login uses the password from here; clients are trusted (local only).
        userlist.write_text(f'"{user}" "{password}"\n')
        ini = self.workdir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"{SINGLE} = {server} dbname={db['NAME']} pool_size=1\n"
            f"* = {server}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {userlist}\nadmin_users = {user}\n"
            f"pool_mode = transaction\ndefault_pool_size = {POOL_SIZE}\n"
            "max_client_conn = 500\n"
        )
        return ini

    def start(self) -> None:
        self.port = _free_port()
        command = [self.binary]
        if os.geteuid() == 0:  # "PgBouncer should not run as root": it reads the ini first
            command += ["-u", _unprivileged_user()]
        command.append(str(self._write_config()))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._accepting, timeout=15, message=f"pgbouncer on port {self.port}")

    def _accepting(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            _unavailable(f"pgbouncer exited with {self.proc.returncode}:\n{self.log_text()}")
        try:
            self.admin("SHOW VERSION")
        except psycopg.OperationalError:
            return False
        return True

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run a command on PgBouncer's admin console (``SHOW CLIENTS``, ...)."""
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            dbname="pgbouncer",
            user=self.database["USER"] or "postgres",
            autocommit=True,
            prepare_threshold=None,  # the admin console has no prepared statements
            connect_timeout=2,
        ) as conn:
            cursor = conn.execute(command)
            names = [column.name for column in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def clients(self, database: str) -> list[dict[str, Any]]:
        return [row for row in self.admin("SHOW CLIENTS") if row["database"] == database]

    def version(self) -> tuple[int, ...]:
        text = str(self.admin("SHOW VERSION")[0]["version"])  # "PgBouncer 1.18.0"
        return tuple(int(part) for part in text.split()[-1].split(".")[:2])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # immediate shutdown
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    _unavailable("running as root and there is no postgres or nobody user to switch to")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def pgbouncer(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the test database, for this module."""
    if connection.vendor != "postgresql":
        pytest.skip("PgBouncer is in front of PostgreSQL only")
    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/sbin")
    if binary is None:
        _unavailable("the pgbouncer binary is not installed")
    assert binary is not None
    with django_db_blocker.unblock():
        database = dict(connection.settings_dict)
    bouncer = PgBouncer(binary, tmp_path_factory.mktemp("pgbouncer"), database)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def pooled_workers(
    worker_processes: WorkerProcesses, pgbouncer: PgBouncer
) -> Iterator[WorkerProcesses]:
    """Workers, and this test's own queries, all through PgBouncer.

    The test process keeps its database (pytest-django created it) and only changes
    where its connection goes; the workers get the same address from the environment.
    """
    worker_processes.env["QTASKS_TEST_PGBOUNCER"] = pgbouncer.address
    saved = dict(connection.settings_dict)
    connection.close()
    through_pooler(connection.settings_dict, pgbouncer.address)
    try:
        yield worker_processes
    finally:
        worker_processes.stop_all()
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)
