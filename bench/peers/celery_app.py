"""The Celery peer's app and tasks, importable by its worker (``celery -A bench.peers.celery_app``).

Redis is broker and result backend, in one Redis database of its own (DB 15 unless
BENCH_REDIS_URL says otherwise) that the driver empties before each measurement.
Everything else is Celery's default: prefetch multiplier 4, acks early, JSON.
"""

from __future__ import annotations

import os
import time

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")

app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.broker_connection_retry_on_startup = True


DONE_KEY = "bench:done"


@app.task(name="noop", ignore_result=True)
def noop() -> None:
    """Results off, as Celery advises for tasks whose result nobody reads; the count of
    finished tasks is one INCR instead (the database queues count a finished row)."""
    app.backend.client.incr(DONE_KEY)


@app.task(name="stamp")
def stamp() -> float:
    return time.time()
