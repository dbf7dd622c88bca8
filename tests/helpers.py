"""Helpers for tests: wait on conditions with deadlines, never on bare sleeps."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.db import connections

T = TypeVar("T")


def analyze(table: str, using: str = "default") -> None:
    """Refresh the planner's statistics of ``table``, as autovacuum (PostgreSQL) would.
    Not on MariaDB/MySQL: there ANALYZE TABLE commits the test's transaction (its rows
    would outlive the test), and InnoDB samples the index statistics by itself."""
    connection = connections[using]
    if connection.vendor == "mysql":
        return
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {connection.ops.quote_name(table)}")


def wait_until(
    predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.01, message: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message or predicate}")
        time.sleep(interval)


def in_threads(
    target: Callable[..., None],
    calls: Iterable[tuple[Any, ...]],
    *,
    timeout: float = 60.0,
    on_error: Callable[[], None] | None = None,
) -> None:
    """Run ``target(*args)`` in a thread of its own for each ``args`` of ``calls``, as
    concurrent clients of the database (each closes its connections when done); wait
    for them all, then raise the first error one of them hit. ``on_error`` runs in the
    failing thread (e.g. ``barrier.abort``, so that the others do not wait forever)."""
    errors: list[BaseException] = []

    def run(*args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:  # raised in the calling thread below
            errors.append(exc)
            if on_error is not None:
                on_error()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=args) for args in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    if errors:
        raise errors[0]


def kill_all(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGKILL the worker processes a test started that still run, and reap them all."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
