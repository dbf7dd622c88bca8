"""What the benchmark scripts share: a scratch database, Django, worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/qtasks_bench"


MARIADB_URL = "mysql://root@127.0.0.1:3306/qtasks_bench"


def fresh_database(url: str, *, create: bool = True) -> None:
    """Drop and create (or only drop) the scratch database named in ``url`` (PostgreSQL
    or MariaDB)."""
    parts = urlparse(url)
    name = parts.path.lstrip("/")
    if parts.scheme.startswith("mysql"):
        import MySQLdb

        conn = MySQLdb.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=parts.username or "root",
            password=parts.password or "",
        )
        try:
            cursor = conn.cursor()
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            if create:
                cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        finally:
            conn.close()
        return
    import psycopg

    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_django(url: str, settings: str = "bench.settings") -> None:
    os.environ["BENCH_DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = settings
    sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def worker_env(url: str, settings: str = "bench.settings") -> dict[str, str]:
    """What a worker process needs on top of the environment to use the bench settings
    (``bench.settings``, tuned, or ``bench.settings_defaults``, the library's defaults)."""
    return {
        "BENCH_DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": settings,
        "PYTHONPATH": str(ROOT),
    }


def worker_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "django", "qtasks_worker", *args]


def start_worker(
    url: str, *args: str, log: Path | None = None, settings: str = "bench.settings"
) -> subprocess.Popen[bytes]:
    env = {**os.environ, **worker_env(url, settings)}
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            worker_argv(*args),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        if log:
            out.close()


def stop_workers(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    """SIGTERM every worker at once (they stop in parallel), then wait for each; SIGKILL
    those still there after ``timeout`` seconds."""
    procs = list(procs)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
