"""Tasks the test suite runs through real workers. Side effects go to ``Execution``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from django_qtasks import app, async_app

from .models import Execution


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task(name="tests.record")
def record(key: str) -> str:
    Execution.objects.create(key=key, started=time.time(), finished=time.time())
    return key


@app.task(name="tests.note")
def note(path: str, key: str) -> str:
    """Records its run in a file, not the database: a worker running only these holds
    no connection per thread (many workers must fit ``max_connections``). One short
    ``O_APPEND`` write per run, so lines from many processes never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key}\n".encode())
    finally:
        os.close(fd)
    return key


@app.task(name="tests.slow")
def slow(key: str, seconds: float) -> str:
    """Marks its start, works for ``seconds``, marks its end (tests wait on the marks)."""
    row = Execution.objects.create(key=key, started=time.time())
    time.sleep(seconds)  # the work itself, not synchronisation
    row.finished = time.time()
    row.save(update_fields=["finished"])
    return key


@app.task(name="tests.flaky", retry=3, retry_backoff=0)
def flaky(key: str, failures: int) -> int:
    """Fails ``failures`` times, then succeeds; returns the attempt that succeeded."""
    runs = Execution.objects.filter(key=key).count() + 1
    Execution.objects.create(key=key, attempt=runs)
    if runs <= failures:
        raise ConnectionError(f"flaky failure {runs}")
    return runs


@app.task(name="tests.fail_value", retry=2, retry_on_exc=[ConnectionError], retry_backoff=0)
def fail_value(key: str) -> None:
    Execution.objects.create(key=key)
    raise ValueError("not retryable")


@app.task(name="tests.always_fail", retry=1, retry_backoff=0)
def always_fail(key: str) -> None:
    Execution.objects.create(key=key)
    raise RuntimeError(f"boom {key}")


@app.task(name="tests.async_add")
async def async_add(a: int, b: int) -> int:
    return a + b


@async_app.task(name="tests.async_app_add")
async def async_app_add(a: int, b: int) -> int:
    return a + b


@app.task(name="tests.gen")
def gen(n: int) -> Any:
    yield from range(n)


@app.task(name="tests.agen")
async def agen(n: int) -> Any:
    for i in range(n):
        yield i * 2


@app.task(name="tests.echo", echo=True)
def echo(self: Any, tag: str) -> dict[str, Any]:
    self.ctx.set_progress(1, 2, "half")
    return {"uuid": str(self.ctx.task_uuid), "attempt": self.ctx.attempt, "tag": tag}


@app.task(name="tests.cancel_me", echo=True)
def cancel_me(self: Any) -> None:
    self.ctx.cancel("changed my mind")


@app.task(name="tests.bad_result")
def bad_result() -> Any:
    return {1, 2, 3}


@app.task(name="tests.async_slow", max_time=0.2)
async def async_slow() -> None:
    import asyncio

    await asyncio.sleep(30)


@app.task(name="tests.exit")
def call_exit() -> None:
    raise SystemExit(3)


@app.task(name="tests.wait_for_file")
def wait_for_file(key: str, path: str, limit: float = 30) -> str:
    """Marks its start, then runs until ``path`` exists (the test decides when it ends)."""
    row = Execution.objects.create(key=key, started=time.time())
    deadline = time.monotonic() + limit
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    row.finished = time.time()
    row.save(update_fields=["finished"])
    return key


@app.task(name="tests.pid")
def pid() -> int:
    return os.getpid()


@app.task(name="tests.cooperative", echo=True)
def cooperative(self: Any, key: str, steps: int = 3000) -> int:
    """Long sync work that reports progress (a cancellation point) at every step."""
    Execution.objects.create(key=key, started=time.time())
    for step in range(steps):
        self.ctx.set_progress(step, steps)
        time.sleep(0.01)
    return steps


@app.task(name="tests.async_forever")
async def async_forever(key: str) -> None:
    import asyncio

    from asgiref.sync import sync_to_async

    await sync_to_async(Execution.objects.create)(key=key, started=time.time())
    await asyncio.sleep(60)


@app.task(name="tests.busy", max_time=0.3)
def busy(seconds: float) -> int:
    """Pure-Python work that never blocks in C: only a time limit can stop it early."""
    deadline = time.monotonic() + seconds
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    return spins


@app.task(name="tests.async_own_timeout", retry=2, retry_backoff=0, max_time=30)
async def async_own_timeout() -> None:
    """Raises a TimeoutError of its own (an HTTP client's, say): not our time limit."""
    raise TimeoutError("upstream took too long")


@app.task(name="tests.bad_result_with_retries", retry=3, retry_backoff=0)
def bad_result_with_retries(key: str) -> Any:
    Execution.objects.create(key=key)
    return object()


@app.task(name="tests.deep_result", retry=3, retry_backoff=0)
def deep_result(key: str, depth: int) -> Any:
    """Returns a list nested ``depth`` deep: past what the JSON encoder can recurse into."""
    Execution.objects.create(key=key)
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


class StrRaises(Exception):
    """An exception whose ``str()`` raises another error."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class StrRaisesItself(Exception):
    """An exception whose ``str()`` raises one of its own kind, whose ``str()`` ..."""

    def __str__(self) -> str:
        raise StrRaisesItself()


@app.task(name="tests.raise_unprintable", retry=1, retry_backoff=0)
def raise_unprintable(key: str, itself: bool) -> None:
    """Raises an exception that cannot be described by ``str()``."""
    Execution.objects.create(key=key)
    raise StrRaisesItself() if itself else StrRaises()


@app.task(name="tests.async_progress", echo=True)
async def async_progress(self: Any) -> str:
    await self.ctx.aset_progress(3, 4, "nearly")
    return "ok"


@app.task(name="tests.record_sturdy", retry=5, retry_backoff=0.05)
def record_sturdy(key: str) -> str:
    """``record`` for fault tests: a query that meets a killed connection is retried."""
    time.sleep(0.005)  # a little work, so that connections die mid-run
    Execution.objects.create(key=key, started=time.time(), finished=time.time())
    return key


@app.task(name="tests.sleepy", max_time=0.5)
def sleepy(key: str, seconds: float) -> str:
    """Blocks in C (time.sleep): a thread cannot be interrupted there, a process can."""
    Execution.objects.create(key=key, started=time.time())
    time.sleep(seconds)
    return key


@app.task(name="tests.hard_exit")
def hard_exit(key: str) -> None:
    Execution.objects.create(key=key, started=time.time())
    os._exit(7)


@app.task(name="tests.stubborn")
def stubborn(key: str, seconds: float = 60) -> str:
    """Ignores cancellation: only ending its process stops it."""
    Execution.objects.create(key=key, started=time.time())
    time.sleep(seconds)
    return key


@app.task(name="tests.drop_my_connection")
def drop_my_connection() -> str:
    """Ends its own database session: the worker must store the result on a new one."""
    from django.db import connection
    from django.db.utils import OperationalError

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    except OperationalError:
        pass  # the session is gone, as intended
    return "dropped"


@app.task(name="tests.length")
def length(text: str) -> int:
    return len(text)


@app.task(name="tests.nul_result")
def nul_result() -> str:
    return "a\u0000b"  # PostgreSQL's jsonb refuses NUL characters


@app.task(name="tests.total")
def total(values: list[int]) -> int:
    """The step after a group: gets the list of the group's results."""
    return sum(values)


@app.task(name="tests.total_elsewhere", queue="elsewhere")
def total_elsewhere(key: str, value: Any) -> str:
    """A flow step on a queue of its own (so a worker of other queues leaves it)."""
    Execution.objects.create(key=key, started=time.time(), finished=time.time())
    return f"{key}:{value}"


def _timed(key: str, seconds: float) -> str:
    """Marks its start, works for ``seconds``, marks its end: the intervals of tasks
    under a concurrency limit must not overlap more than the limit allows."""
    row = Execution.objects.create(key=key, started=time.time())
    time.sleep(seconds)  # the work itself, not synchronisation
    row.finished = time.time()
    row.save(update_fields=["finished"])
    return key


@app.task(name="tests.limited", max_concurrency=1)
def limited(key: str, seconds: float = 0) -> str:
    return _timed(key, seconds)


@app.task(name="tests.limited_two", max_concurrency=2)
def limited_two(key: str, seconds: float = 0) -> str:
    return _timed(key, seconds)


@app.task(
    name="tests.limited_per_account",
    max_concurrency=1,
    concurrency_key=lambda account, *args, **kwargs: f"account:{account}",
)
def limited_per_account(account: int, key: str, seconds: float = 0) -> str:
    return _timed(key, seconds)


def _cut_own_connection() -> None:
    """Have the database end this thread's session from the server side, as a failover
    or an administrator would (the statement fails with a connection-level error)."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        else:
            cursor.execute("KILL CONNECTION_ID()")


@app.task(name="tests.cut_once")
def cut_once(key: str) -> int:
    """Its first run loses its database connection (and lets the error go); the next
    run succeeds. No retries: only a rescue can run it again."""
    runs = Execution.objects.filter(key=key).count() + 1
    Execution.objects.create(key=key, attempt=runs)
    if runs == 1:
        _cut_own_connection()
    return runs


@app.task(name="tests.cut_always")
def cut_always(key: str) -> None:
    """Loses its database connection on every run."""
    Execution.objects.create(key=key)
    _cut_own_connection()


@app.task(name="tests.statement_timeout")
def statement_timeout() -> None:
    """A query the database cancels (statement timeout): the task's own error."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 10")
        cursor.execute("SELECT pg_sleep(1)")


@app.task(name="tests.raise_operational_error")
def raise_operational_error() -> None:
    """Raises what a cut connection raises, without any database having said so."""
    from django.db import OperationalError

    raise OperationalError("server closed the connection unexpectedly")


@app.task(name="tests.work")
def work(key: str, seconds: float = 0.02) -> list[Any]:
    """A plain task (no retries) for the fault tests: some work, then its side effect;
    returns its key and the pid of the process that ran it (whose result was stored)."""
    return _work(key, seconds)


@app.task(name="tests.work_held")
def work_held(key: str, seconds: float = 0.02) -> list[Any]:
    """``tests.work``, but on a worker started with ``$QTASKS_TEST_HOLD`` (a path) it
    first waits until that file exists (two minutes at most): the test decides when that
    worker's run ends, while the same task runs through at once on any other worker."""
    hold = os.environ.get("QTASKS_TEST_HOLD")
    deadline = time.monotonic() + 120
    while hold and not Path(hold).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return _work(key, seconds)


def _work(key: str, seconds: float) -> list[Any]:
    time.sleep(seconds)
    Execution.objects.create(key=key, started=time.time(), finished=time.time())
    return [key, os.getpid()]
