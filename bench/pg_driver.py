"""The database's own limit for the enqueue columns (see bench/measure.py for the protocol).

    python bench/pg_driver.py {enqueue,bulk} N

The same task table as ours (our migrations: its indexes and its wake-up trigger), written
by psycopg alone with no queue library in between: a prepared one-row INSERT in autocommit
per call, and one COPY of rows formatted with one f-string each. Whatever a queue does
on top of this, it cannot enqueue faster than this row on this server; the gap between
this row and ours in the table is the cost of the library.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_URL, setup_django
from bench.measure import Driver, main

COLUMNS = (
    "uuid", "task_name", "queue", "priority", "status", "args", "kwargs", "max_retries",
    "run_after", "created_at", "updated_at", "tags", "errors", "traceback", "attempt",
    "worker_id", "cancel_requested",
)  # fmt: skip


class PostgresDriver(Driver):
    bulk_api = "COPY"
    settings = "psycopg, no queue library: prepared INSERT per call; COPY for bulk"

    def __init__(self) -> None:
        self.url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)

    def prepare(self) -> None:
        from django.db import connection

        setup_django(self.url)  # our migrations: the same table, indexes and trigger
        connection.close()
        self.connect()

    def connect(self) -> None:
        """A psycopg connection of its own to the migrated database, in autocommit."""
        import psycopg

        from django_qtasks.models import uuid7, uuid7s

        self.uuid7, self.uuid7s = uuid7, uuid7s
        self.conn: Any = psycopg.connect(self.url, autocommit=True)
        names = ", ".join(COLUMNS)
        marks = "%s, 'bench.noop', 'default', 0, 'new', '[]', '{}', 0, %s, %s, %s, '[]', "
        marks += "'[]', '', 0, '', false"
        self.insert = f"INSERT INTO django_qtasks_taskrecord ({names}) VALUES ({marks})"
        self.copy = f"COPY django_qtasks_taskrecord ({names}) FROM STDIN"

    def enqueue_one(self) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        self.conn.execute(self.insert, (self.uuid7(), now, now, now), prepare=True)

    def enqueue_bulk(self, n: int) -> None:
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        values = ["bench.noop", "default", "0", "new", "[]", "{}", "0", now, now, now, "[]", "[]"]
        tail = "\t" + "\t".join([*values, "", "0", "", "f"]) + "\n"
        with self.conn.cursor().copy(self.copy) as copy:
            copy.write("".join(f"{key}{tail}" for key in self.uuid7s(n)))

    def close(self) -> None:
        if hasattr(self, "conn"):
            self.conn.close()


if __name__ == "__main__":
    main(PostgresDriver)
