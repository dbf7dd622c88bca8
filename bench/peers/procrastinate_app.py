"""The procrastinate peer's app and tasks, in a module of their own so that its worker
(``procrastinate --app bench.peers.procrastinate_app.app worker``) imports them by name."""

from __future__ import annotations

import os
import time

import procrastinate

URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x")

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=URL))


@app.task(name="noop")
async def noop() -> None:
    return None


@app.task(name="stamp", pass_context=True)
async def stamp(context: procrastinate.JobContext) -> None:
    """Procrastinate keeps no return values: the start time goes to a side table."""
    started = time.time()
    await context.app.connector.execute_query_async(
        "INSERT INTO bench_stamp (job_id, started) VALUES (%(job_id)s, %(started)s)",
        job_id=context.job.id,
        started=started,
    )
