"""django_qtasks.testing with tasks written against Django's Tasks API."""

from __future__ import annotations

import pytest

from tests.djangotasks import skip_without_framework

skip_without_framework()

from django_qtasks.contrib.testing import (  # noqa: E402
    assert_task_enqueued,
    immediate,
    run_pending_tasks,
)
from tests.djangotasks.taskapp import tasks  # noqa: E402
from tests.djangotasks.taskapp.api import TaskResultStatus  # noqa: E402


@pytest.mark.django_db
def test_immediate_mode_runs_django_tasks_in_enqueue() -> None:
    with immediate():
        result = tasks.add.enqueue(1, 2)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 3
    assert_task_enqueued(tasks.add, args=[1, 2], status="success")


@pytest.mark.django_db
def test_the_drain_helper_runs_django_tasks() -> None:
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    [done] = run_pending_tasks()
    assert done.returning == 5
    result.refresh()
    assert result.return_value == 5
