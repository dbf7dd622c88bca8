"""The worker's start-up line lists every task it can run: ``@app.task`` and Django's
``@task`` alike."""

from __future__ import annotations

import logging

import pytest
from django.core.management import call_command

from tests.djangotasks import skip_without_framework

skip_without_framework()


@pytest.mark.django_db(transaction=True)
def test_the_startup_line_names_app_tasks_and_django_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="django_qtasks.worker"):
        call_command("qtasks_worker", "--burst", verbosity=1)
    [line] = [r.getMessage() for r in caplog.records if "tasks=" in r.getMessage()]
    names = line.split("tasks=", 1)[1].split(", ")
    assert "tests.record" in names  # @app.task
    assert "django.tasks:tests.djangotasks.taskapp.tasks.add" in names  # Django's @task
    assert "django.tasks:tests.djangotasks.taskapp.tasks.record_other" in names
    assert len(names) == len(set(names))
