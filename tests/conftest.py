from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from django_qtasks import app as project_app
from tests.helpers import kill_all

ROOT = Path(__file__).resolve().parent.parent


# The markers of tests for one database, and the vendor each needs.
_VENDOR_MARKERS = {"postgres": ("postgresql", "PostgreSQL"), "mysql": ("mysql", "MariaDB or MySQL")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``@pytest.mark.postgres`` and ``@pytest.mark.mysql`` tests are skipped when the
    suite runs on another database."""
    for marker, (vendor, name) in _VENDOR_MARKERS.items():
        if connection.vendor == vendor:
            continue
        skip = pytest.mark.skip(reason=f"needs {name} (set DATABASE_URL)")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


# The fault tests' summary lines for the terminal ($QTASKS_FAULT_REPORT=- or 1, see
# tests/faultkit.py): each test's lines ride on its report (under pytest-xdist, from the
# worker process to the one that writes the terminal), and are listed at the end.
FAULT_LINES = "fault_report"
_fault_lines: list[str] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    faultkit = sys.modules.get("tests.faultkit")
    if faultkit is not None and faultkit.REPORTED:
        report.user_properties.extend((FAULT_LINES, line) for line in faultkit.REPORTED)
        faultkit.REPORTED.clear()
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _fault_lines.extend(value for key, value in report.user_properties if key == FAULT_LINES)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _fault_lines:
        terminalreporter.section("fault report")
        for line in _fault_lines:
            terminalreporter.write_line(line)


@pytest.fixture
def run_worker() -> Callable[..., int]:
    """Run an in-process worker in burst mode until nothing is left; returns its exit code."""

    def run(**options: object) -> int:
        options.setdefault("burst", True)
        options.setdefault("concurrency", 2)
        starter = project_app.build_starter(**options)  # type: ignore[arg-type]
        return starter.run(install_signals=False)

    return run


class WorkerProcesses:
    """Real ``manage.py qtasks_worker`` processes on the test database."""

    def __init__(self, db_name: str) -> None:
        self.db_name = db_name
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env: dict[str, str] = {}  # more environment for the workers started next

    def start(self, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "QTASKS_TEST_DB_NAME": self.db_name,
            "PYTHONPATH": str(ROOT),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            **self.env,
        }
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "django", "qtasks_worker", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            if log:
                out.close()  # the child has its own copy
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        kill_all(self.procs)


@pytest.fixture
def worker_processes(transactional_db: None) -> Iterator[WorkerProcesses]:
    """Start real worker processes; they are killed when the test ends."""
    procs = WorkerProcesses(connection.settings_dict["NAME"])
    try:
        yield procs
    finally:
        procs.stop_all()
