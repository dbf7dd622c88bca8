"""Time limits for sync tasks running in threads.

A thread cannot be killed, but CPython can raise an exception in it: the
:class:`Timekeeper` raises :class:`TaskTimeLimitExceeded` in a task's thread when
its ``max_time`` passes. It lands at the next Python instruction the thread runs;
a thread blocked inside one long C call (a socket read, ``time.sleep``) sees it when
that call returns. Hard limits (ending the task whatever it does) need a process.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django_qtasks.exceptions import QTasksError

logger = logging.getLogger("django_qtasks.timelimit")


class TaskTimeLimitExceeded(QTasksError, TimeoutError):
    """The task ran longer than its ``max_time``."""

    # Rows record an error by its type's dotted name, and users match on it: the
    # name stays the one of the flat layout (which still imports) when the code moves.
    __module__ = "django_qtasks.timelimit"

    def __init__(self, message: str = "Task exceeded its max_time and was stopped.") -> None:
        super().__init__(message)


def time_limit_message(max_time: float) -> str:
    return f"Task exceeded its max_time of {max_time:g} s and was stopped."


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None
    )


class _Scope:
    __slots__ = ("active", "fired", "max_time", "thread_id")

    def __init__(self, thread_id: int, max_time: float) -> None:
        self.thread_id = thread_id
        self.max_time = max_time
        self.active = True
        self.fired = False


class Timekeeper:
    """One thread per worker that interrupts sync tasks which overrun ``max_time``."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, _Scope]] = []
        self._counter = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="qtasks-timekeeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        self._thread.join(timeout=1)

    @contextmanager
    def limit(self, max_time: float | None) -> Iterator[None]:
        """Run the body under ``max_time`` seconds (no limit for ``None``)."""
        if max_time is None:
            yield
            return
        scope = _Scope(threading.get_ident(), max_time)
        with self._lock:
            heapq.heappush(self._heap, (time.monotonic() + max_time, next(self._counter), scope))
            self._lock.notify_all()
        try:
            yield
        except TaskTimeLimitExceeded:
            with self._lock:
                scope.active = False
            raise TaskTimeLimitExceeded(time_limit_message(max_time)) from None
        finally:
            with self._lock:
                scope.active = False
                fired = scope.fired
            if fired:
                # The exception may still be pending if the body ended just as it fired:
                # withdraw it, so it can never land in the worker's own code.
                _raise_in_thread(scope.thread_id, None)
        if fired:
            raise TaskTimeLimitExceeded(time_limit_message(max_time))

    def _run(self) -> None:
        with self._lock:
            while not self._stopped:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or not self._heap[0][2].active):
                    _, _, scope = heapq.heappop(self._heap)
                    if scope.active and not scope.fired:
                        scope.fired = True
                        logger.warning(
                            "A task ran over its max_time of %g s; interrupting it",
                            scope.max_time,
                            extra={"action": "time_limit"},
                        )
                        _raise_in_thread(scope.thread_id, TaskTimeLimitExceeded)
                timeout = self._heap[0][0] - now if self._heap else None
                self._lock.wait(timeout)
