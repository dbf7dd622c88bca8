"""The outage log of a worker's threads: one WARNING and one INFO per outage, however
the threads' connections die and answer around it."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator

import pytest

from django_qtasks.worker.dbretry import DatabaseRetry


class Lane:
    """A thread of its own that runs the calls given to it, one at a time, in order:
    DatabaseRetry keeps what it knows of each thread's connection per thread."""

    def __init__(self) -> None:
        self._calls: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self._done: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            try:
                call()
            except BaseException as exc:  # handed to the test's thread
                self._done.put(exc)
            else:
                self._done.put(None)

    def do(self, call: Callable[[], object]) -> None:
        self._calls.put(call)
        if (exc := self._done.get(timeout=10)) is not None:
            raise exc

    def stop(self) -> None:
        self._calls.put(None)
        self._thread.join(timeout=10)


@pytest.fixture
def lanes() -> Iterator[tuple[Lane, Lane]]:
    pair = (Lane(), Lane())
    yield pair
    for lane in pair:
        lane.stop()


@pytest.fixture
def retry(caplog: pytest.LogCaptureFixture) -> DatabaseRetry:
    caplog.set_level(logging.INFO, logger="django_qtasks.worker")
    return DatabaseRetry("default", poll_interval=0.1, patience=1.0)


def outage_lines(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    records = [r for r in caplog.records if r.name == "django_qtasks.worker"]
    down = sum("Database unreachable" in r.getMessage() for r in records)
    back = sum("Database reachable again" in r.getMessage() for r in records)
    return down, back


def test_a_restart_that_ends_the_sessions_one_by_one_is_one_outage(
    lanes: tuple[Lane, Lane], retry: DatabaseRetry, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart ends the sessions one by one: thread B's old session still answers
    after thread A's died, then A's reconnect fails (the server is stopping), then B's
    session dies too. That is one outage, one WARNING and one INFO, not two."""
    a, b = lanes
    a.do(retry.reached)
    b.do(retry.reached)
    a.do(lambda: retry.lost_run("OperationalError: terminating connection"))
    b.do(retry.reached)  # B's session is not ended yet
    a.do(lambda: retry.lost_run("OperationalError: connection refused"))  # A's retry
    assert retry.down
    b.do(lambda: retry.lost_run("OperationalError: server closed the connection"))
    a.do(retry.reached)  # A's new connection: the database is back
    assert not retry.down
    assert outage_lines(caplog) == (1, 1)

    # B's new connection works, then dies: a new outage.
    b.do(retry.reached)
    b.do(lambda: retry.lost_run("OperationalError: terminating connection"))
    assert retry.down
    b.do(retry.reached)
    assert outage_lines(caplog) == (2, 2)


def test_one_cut_session_ends_when_another_answers(
    lanes: tuple[Lane, Lane], retry: DatabaseRetry, caplog: pytest.LogCaptureFixture
) -> None:
    """pg_terminate_backend() of one session: the others answer, and that is the end of
    it, though none of them is newer than the cut."""
    a, b = lanes
    a.do(retry.reached)
    b.do(retry.reached)
    a.do(lambda: retry.lost_run("OperationalError: terminating connection"))
    b.do(retry.reached)
    assert not retry.down
    assert outage_lines(caplog) == (1, 1)
    # Later, A's new connection is cut too: a new outage, not the old one going on.
    a.do(retry.reached)
    a.do(lambda: retry.lost_run("OperationalError: terminating connection"))
    b.do(retry.reached)
    assert outage_lines(caplog) == (2, 2)
