"""The values below every layer: importable before Django, and the snapshot's two methods
still go through the project's app."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from django_qtasks import app, values
from django_qtasks.api.queue_tasks import QueueTasks
from django_qtasks.api.task import Outcome, Task, TaskSpec
from django_qtasks.models import FINISHED_STATUSES
from django_qtasks.values import progress_fraction
from tests.testapp import tasks

ROOT = Path(__file__).resolve().parents[2]


def test_the_old_path_names_the_same_classes() -> None:
    assert (Task, TaskSpec, Outcome) == (values.Task, values.TaskSpec, values.Outcome)


def test_a_snapshot_knows_the_final_statuses_of_the_model() -> None:
    assert set(FINISHED_STATUSES) == values._FINISHED


def test_importing_the_package_imports_no_django() -> None:
    """What lets the package's ``__init__`` hand the values the way to the app at once."""
    code = (
        "import sys, django_qtasks, django_qtasks.values;"
        "loaded = [m for m in sys.modules if m == 'django' or m.startswith('django.')];"
        "assert not loaded, loaded"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


@pytest.mark.django_db
def test_refresh_and_cancel_go_through_the_project_app_whoever_made_the_snapshot() -> None:
    other = QueueTasks(registry=app.registry)
    task = other.add_task(tasks.add.name, 1, 2)
    assert task.refresh() == app.get(task.uuid)
    cancelled = task.cancel("not needed")
    assert cancelled is not None
    assert (cancelled.status, cancelled.errors[-1]["message"]) == ("cancel", "not needed")


@pytest.mark.parametrize(
    ("progress", "fraction"),
    [
        ({"done": 3, "total": 4}, 0.75),
        ({"done": 9, "total": 4}, 1.0),
        ({"done": -1, "total": 4}, 0.0),
        ({"done": 3}, None),
        ({"done": 3, "total": 0}, None),
        ({"done": -5, "total": -1}, None),
        ({"done": "x", "total": 4}, None),
        ({"done": 10**400, "total": 3}, None),  # past a float: OverflowError
        ({"done": float("inf"), "total": 10}, None),
        ([1, 2], None),
        (None, None),
    ],
)
def test_progress_fraction_shows_only_what_a_bar_can(progress: object, fraction: object) -> None:
    """The admin and the example site read a row's progress through one rule; a row
    written by another program may hold any JSON there."""
    assert progress_fraction(progress) == fraction
