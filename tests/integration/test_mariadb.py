"""What only MariaDB/MySQL have: the server version check, the isolation level the
queue's own transactions ask for, the retry of a deadlocked transaction."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from django.core.checks import run_checks
from django.db import OperationalError, connection

from django_qtasks import app
from django_qtasks.storage.db import DEADLOCK, is_lock_conflict, mysql_error_code
from django_qtasks.storage.mysql import MySQLStorage, version_problem

mysql = pytest.mark.mysql


@pytest.mark.parametrize(
    ("mariadb", "version", "too_old"),
    [(True, (10, 5, 27), True), (True, (10, 6, 0), False), (True, (11, 4, 2), False),
     (False, (5, 7, 44), True), (False, (8, 0, 36), False)],
)  # fmt: skip
def test_the_minimum_versions_are_mariadb_10_6_and_mysql_8_0(
    mariadb: bool, version: tuple[int, ...], too_old: bool
) -> None:
    server = SimpleNamespace(mysql_is_mariadb=mariadb, mysql_version=version)
    problem = version_problem(server)
    assert (problem is not None) == too_old
    if problem:
        name = "MariaDB 10.6" if mariadb else "MySQL 8.0"
        assert f"needs {name} or newer" in problem, problem
        assert ".".join(map(str, version)) in problem


@mysql
@pytest.mark.django_db
def test_this_server_passes_the_version_check_and_storage_is_the_mariadb_one() -> None:
    assert version_problem(connection) is None
    errors = [m for m in run_checks(databases=["default"]) if m.id == "django_qtasks.E005"]
    assert errors == []
    assert type(app.broker.storage) is MySQLStorage


@mysql
@pytest.mark.django_db(transaction=True)
def test_a_repeatable_read_connection_claims_under_read_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A project that set REPEATABLE READ keeps it for its own queries; the claim's
    transaction asks for READ COMMITTED first (no gap locks that would make an enqueue
    wait for a claim)."""
    task = app.add_task("tests.record", "rr")
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    monkeypatch.setattr(connection, "isolation_level", "repeatable read")
    seen: list[str] = []

    def spy(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql.split(" ", 3)[0] + " " + sql.split(" ", 3)[1])
        return execute(sql, params, many, context)

    try:
        with connection.execute_wrapper(spy):
            claimed = app.broker.storage.claim("w-rr", None, 5)
    finally:
        connection.close()  # the session's level goes with it
    assert [t.uuid for t in claimed] == [task.uuid]
    # the level is set before the claim's first read (which names its columns)
    assert seen[0] == "SET TRANSACTION", seen
    assert seen[1].startswith("SELECT "), seen


def test_a_deadlock_is_retried_only_outside_a_callers_transaction() -> None:
    """InnoDB rolls a deadlocked transaction back whole: the queue runs its own again,
    but never one of the caller's, whose earlier statements are gone too."""
    deadlock = OperationalError(DEADLOCK, "Deadlock found when trying to get lock")
    assert mysql_error_code(deadlock) == DEADLOCK
    assert is_lock_conflict(deadlock, "default") == (connection.vendor == "mysql")
    assert not is_lock_conflict(OperationalError(2006, "gone away"), "default")
