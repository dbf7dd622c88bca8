"""Django tasks run by a real ``qtasks_worker`` process: the worker finds them through
the AppConfig alone, and sends Django's signals from its own process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.djangotasks import skip_without_framework

skip_without_framework()

from tests.djangotasks.taskapp import tasks  # noqa: E402
from tests.djangotasks.taskapp.api import TaskResultStatus  # noqa: E402
from tests.testapp.models import Execution  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_worker_process_runs_django_tasks_and_sends_their_signals(
    worker_processes: Any, tmp_path: Path
) -> None:
    signalled = tasks.signalled.enqueue("hello")
    flaky = tasks.flaky.enqueue("proc", failures=1)
    failing = tasks.fail.enqueue("proc-fail")
    async_result = tasks.async_context.enqueue("proc-async")
    log = tmp_path / "worker.log"
    proc = worker_processes.start("--burst", "--poll-interval", "0.05", log=log)
    assert proc.wait(timeout=60) == 0, log.read_text(errors="replace")[-3000:]

    for result in (signalled, flaky, failing, async_result):
        result.refresh()
    assert signalled.return_value == "hello"
    assert flaky.return_value["attempt"] == 2
    assert failing.status == TaskResultStatus.FAILED
    assert "ValueError: boom proc-fail" in failing.errors[0].traceback
    assert async_result.return_value == ["proc-async", 1, async_result.id]

    traces = set(
        Execution.objects.filter(key__startswith=f"signal:{signalled.id}:").values_list(
            "key", "attempt"
        )
    )
    prefix = f"signal:{signalled.id}"
    assert traces == {
        (f"{prefix}:enqueued:READY:QTasksBackend", 0),  # in this process
        (f"{prefix}:started:RUNNING:QTasksBackend", 1),  # in the worker process
        (f"{prefix}:finished:SUCCESSFUL:QTasksBackend", 1),
    }
