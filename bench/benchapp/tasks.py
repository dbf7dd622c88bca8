from __future__ import annotations

import os
import time

from django_qtasks import app

from .models import SideEffect


def _work(key: int, work: float) -> int:
    """A little work, then a side effect; a worker may be killed at any point of it."""
    time.sleep(work)
    SideEffect.objects.create(key=key, pid=os.getpid())
    return key


@app.task(name="bench.plain")
def plain(key: int, work: float) -> int:
    """What a new user writes: no ``retry=`` (bench/chaos.py's default task)."""
    return _work(key, work)


@app.task(name="bench.chaos", retry=20, retry_backoff=0.05)
def chaos(key: int, work: float) -> int:
    """The same with retries (``bench/chaos.py --task bench.chaos``)."""
    return _work(key, work)


@app.task(name="bench.noop")
def noop() -> None:
    return None


#: Loop turns of :func:`spin`: about a millisecond of CPU on the benchmark machine.
SPIN = 10_000


@app.task(name="bench.spin")
def spin() -> int:
    """A CPU-bound task: pure Python that holds the GIL throughout, so threads of one
    process cannot run two at once and only more processes add throughput."""
    total = 0
    for number in range(SPIN):
        total += number * number % 7
    return total


@app.task(name="bench.stamp")
def stamp() -> float:
    """When the task started, by the clock the benchmark reads: pickup latency."""
    return time.time()


try:  # Django's own Tasks framework (Django 6.0+): enqueue() on our backend
    from django.tasks import task as django_task
except ImportError:  # Django 5.2 without the backport: the column shows "—"
    django_task = None

if django_task is not None:

    @django_task
    def django_noop() -> None:
        """The no-op task of the ``django.tasks enqueue/s`` column."""
        return None
