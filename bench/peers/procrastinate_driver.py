"""The benchmark driver for procrastinate, plain (runs in .bench/venv-procrastinate).

The app uses procrastinate's async psycopg connector in its worker (``procrastinate
worker --concurrency C``: C jobs at once on one event loop, LISTEN/NOTIFY on, the
default) and its sync psycopg connector for deferring, as its docs advise for sync code.
Bulk: ``Task.batch_defer()``. The latency task writes its start time into a side table,
since procrastinate keeps no return values.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import procrastinate
import psycopg

from bench.measure import ROOT, Driver, main
from bench.peers.procrastinate_app import URL, app, noop, stamp

CONCURRENCY = os.environ.get("BENCH_PROCRASTINATE_CONCURRENCY", "10")


class ProcrastinateDriver(Driver):
    bulk_api = "Task.batch_defer()"
    settings = f"procrastinate worker --concurrency {CONCURRENCY} (async tasks), LISTEN/NOTIFY"

    def prepare(self) -> None:
        self._sync = app.replace_connector(procrastinate.SyncPsycopgConnector(conninfo=URL))
        self._sync.__enter__()
        app.open()
        app.schema_manager.apply_schema()
        self.db = psycopg.connect(URL, autocommit=True)
        self.db.execute("CREATE TABLE bench_stamp (job_id bigint PRIMARY KEY, started float8)")

    def enqueue_one(self) -> None:
        noop.defer()

    def enqueue_bulk(self, n: int) -> None:
        noop.batch_defer(*([{}] * n))

    def worker_command(self) -> tuple[list[str], dict[str, str]]:
        cli = str(Path(sys.executable).with_name("procrastinate"))
        argv = [cli, "--app", "bench.peers.procrastinate_app.app", "worker"]
        return [*argv, "--concurrency", CONCURRENCY], {"PYTHONPATH": str(ROOT)}

    def done_count(self) -> int:
        query = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
        row = self.db.execute(query).fetchone()
        return row[0] if row else 0

    def enqueue_stamped(self) -> Any:
        return stamp.defer()

    def started_at(self, handle: Any) -> float | None:
        query = "SELECT started FROM bench_stamp WHERE job_id = %s"
        row = self.db.execute(query, (handle,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        app.close()
        self._sync.__exit__(None, None, None)
        self.db.close()


if __name__ == "__main__":
    main(ProcrastinateDriver)
