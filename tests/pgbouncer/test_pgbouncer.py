"""The worker and enqueue behind a real PgBouncer in transaction mode.

A real ``qtasks_worker`` process and this test's own queries both reach the test
database through the ``pgbouncer`` process of the module (see conftest.py), with the
settings docs/deployment.md asks for: ``DISABLE_SERVER_SIDE_CURSORS = True`` and
Django's default ``prepare_threshold`` (None). PgBouncer's admin console shows that the
traffic really went through it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection

from django_qtasks import app
from django_qtasks.models import TaskRecord
from django_qtasks.storage.cursors import session_state_wanted
from tests.conftest import WorkerProcesses
from tests.helpers import wait_until
from tests.pgbouncer.conftest import POOL_SIZE, SINGLE, PgBouncer
from tests.testapp.models import Execution

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

FAST = ("--poll-interval", "0.05", "-v", "1")


def start_worker(workers: WorkerProcesses, tmp_path: Path, *args: str) -> Path:
    log = tmp_path / "worker.log"
    proc = workers.start("--concurrency", "4", *FAST, *args, log=log)
    wait_until(
        lambda: proc.poll() is None and proc.pid in live_worker_pids(),
        timeout=30,
        message=f"the worker to register through PgBouncer\n{log.read_text(errors='replace')}",
    )
    return log


def live_worker_pids() -> set[int]:
    return {info.get("pid") for info in app.broker.live_workers().values()}


def all_finished(uuids: list[Any]) -> bool:
    return not TaskRecord.objects.filter(uuid__in=uuids, finished_at__isnull=True).exists()


def assert_clean(log: Path) -> None:
    """Nothing in the worker's log says the pooler broke a statement or a session."""
    text = log.read_text(errors="replace")
    for bad in ("prepared statement", "psycopg", "DatabaseError", "OperationalError", "LISTEN"):
        assert bad not in text, f"{bad!r} in the worker log:\n{text[-3000:]}"


def test_enqueue_single_and_bulk_then_a_worker_drains_them_exactly_once(
    pooled_workers: WorkerProcesses, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    log = start_worker(pooled_workers, tmp_path)
    # The worker is idle and polling (no LISTEN behind the pooler): enqueue now.
    singles = [app.add_task("tests.record", f"s{n}").uuid for n in range(30)]
    bulk = [t.uuid for t in app.add_tasks([("tests.record", (f"b{n}",), {}) for n in range(600)])]
    # Far more than psycopg's default prepare_threshold (5) of each statement.
    wait_until(lambda: all_finished(singles + bulk), timeout=60, message="all tasks to finish")

    rows = list(TaskRecord.objects.values_list("args", "status", "returning"))
    assert len(rows) == 630
    assert {(status, ret == args[0]) for args, status, ret in rows} == {("success", True)}
    runs = Counter(Execution.objects.values_list("key", flat=True))
    assert len(runs) == 630
    assert set(runs.values()) == {1}, "each task runs exactly once"

    name = connection.settings_dict["NAME"]
    clients = pgbouncer.clients(name)
    assert len(clients) >= 3, f"the worker and this test connect through PgBouncer: {clients}"
    servers = [row for row in pgbouncer.admin("SHOW SERVERS") if row["database"] == name]
    assert 0 < len(servers) <= POOL_SIZE < len(clients), "clients share a few server connections"
    assert_clean(log)


def test_retries_and_cancellation_through_the_pooler(
    pooled_workers: WorkerProcesses, tmp_path: Path
) -> None:
    log = start_worker(pooled_workers, tmp_path)
    flaky = app.add_task("tests.flaky", "f", 2)  # fails twice, then succeeds
    waiting = app.add_task("tests.record", "never", run_after=3600)
    running = app.add_task("tests.cooperative", "coop")

    app.cancel(waiting.uuid)
    wait_until(lambda: Execution.objects.filter(key="coop").exists(), message="coop to start")
    app.cancel(running.uuid, "stop it")

    done = wait_until(lambda: (t := app.get(flaky.uuid)) and t.is_finished and t, timeout=30)
    assert (done.status, done.attempt) == ("success", 3)
    assert app.get(waiting.uuid).status == "cancel"
    stopped = wait_until(lambda: (t := app.get(running.uuid)) and t.is_finished and t, timeout=30)
    assert stopped.status == "cancel"
    assert stopped.errors[-1]["message"] == "stop it"
    assert stopped.progress["done"] < 3000
    assert not Execution.objects.filter(key="never").exists()
    assert_clean(log)


def test_heartbeats_keep_coming_through_the_pooler(
    pooled_workers: WorkerProcesses, tmp_path: Path
) -> None:
    log = start_worker(pooled_workers, tmp_path)
    (first,) = (info for info in app.broker.live_workers().values())
    wait_until(
        lambda: any(
            info["last_beat"] > first["last_beat"] for info in app.broker.live_workers().values()
        ),
        timeout=30,
        message="a second heartbeat",
    )
    assert_clean(log)


def test_listen_notify_auto_polls_behind_the_pooler(pooled_workers: WorkerProcesses) -> None:
    """The settings of a pooled alias turn LISTEN off; an explicit True still wins."""
    alias = connection.alias
    assert connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert session_state_wanted("auto", alias) is False
    assert session_state_wanted(True, alias) is True
    assert app.broker._listener() is None  # the default setting is "auto"


def test_prepared_statements_break_a_transaction_pooler_unless_disabled(
    pgbouncer: PgBouncer,
) -> None:
    """Two clients on one server session: psycopg's automatic prepared statements
    (``prepare_threshold``) collide there on PgBouncer before 1.21, while Django's
    connection parameters (``prepare_threshold = None``) never prepare."""
    params = dict(connection.get_connection_params())
    params.update(host="127.0.0.1", port=pgbouncer.port, dbname=SINGLE, autocommit=True)

    def run_twice(**overrides: Any) -> None:
        with (
            psycopg.connect(**{**params, **overrides}) as one,
            psycopg.connect(**{**params, **overrides}) as two,
        ):
            for n in range(10):  # past any threshold
                one.execute("SELECT %s::int", [n]).fetchone()
                two.execute("SELECT %s::int + 1", [n]).fetchone()

    assert params["prepare_threshold"] is None  # Django's default, kept by our settings
    run_twice()
    if pgbouncer.version() >= (1, 21):
        pytest.skip("PgBouncer 1.21+ tracks prepared statements itself")
    with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
        run_twice(prepare_threshold=0, cursor_factory=psycopg.Cursor)
