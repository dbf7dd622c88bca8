"""``qtasks_worker --heartbeat-file``: a real worker touches the file on each heartbeat
while it runs, and not once it has stopped (what a liveness probe relies on)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from django_qtasks.settings import get_settings
from tests.conftest import WorkerProcesses
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else 0


def test_the_file_advances_while_the_worker_runs_and_stops_with_it(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    path = tmp_path / "alive"
    log = tmp_path / "worker.log"
    interval = get_settings().heartbeat_interval
    proc = worker_processes.start("--heartbeat-file", str(path), log=log)

    wait_until(path.exists, timeout=30, message=f"the heartbeat file\n{log}")
    first = mtime(path)
    wait_until(lambda: mtime(path) > first, timeout=3 * interval, message="the next heartbeat")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    last = mtime(path)
    with pytest.raises(AssertionError, match="timed out"):
        wait_until(lambda: mtime(path) > last, timeout=interval + 1)


def test_the_children_of_a_process_pool_touch_it(
    worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    path = tmp_path / "alive"
    worker_processes.start("--processes", "1", "--heartbeat-file", str(path))
    wait_until(path.exists, timeout=60, message="the heartbeat file")
