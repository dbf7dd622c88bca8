"""pytest fixtures for projects that use django-qtasks, loaded through the ``pytest11``
entry point whenever the package is installed (``-p no:django_qtasks`` turns them off).

They need pytest-django, and each one asks for its ``db`` fixture, so a test needs no
``django_db`` mark of its own (a ``transaction=True`` mark or ``transactional_db``
still wins). This module imports nothing from Django until a fixture is used, so it
costs nothing in test runs that do not use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from django_qtasks.contrib.testing import EnqueuedTasks
    from django_qtasks.values import Task


def _require_db(request: pytest.FixtureRequest) -> None:
    """pytest-django's database access for this test, or a failure that says what to do."""
    if not request.config.pluginmanager.hasplugin("django"):
        pytest.fail(
            f"The {request.fixturename} fixture of django-qtasks needs pytest-django: "
            "pip install pytest-django, and set DJANGO_SETTINGS_MODULE.",
            pytrace=False,
        )
    request.getfixturevalue("db")


@pytest.fixture
def qtasks_immediate(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run every task at ``add_task()`` time, in the test's thread, through the real
    executor (``QTASKS["MODE"] = "immediate"`` for the test). Inside
    ``transaction.atomic()`` tasks run on commit."""
    _require_db(request)
    from django_qtasks.contrib.testing import immediate

    with immediate():
        yield


@pytest.fixture
def qtasks_run_pending(request: pytest.FixtureRequest) -> Callable[..., list[Task]]:
    """:func:`django_qtasks.testing.run_pending_tasks`: drain the queue in this thread,
    in claim order; ``qtasks_run_pending(queues=["mail"], until_empty=False)``."""
    _require_db(request)
    from django_qtasks.contrib.testing import run_pending_tasks

    return run_pending_tasks


@pytest.fixture
def qtasks_enqueued(request: pytest.FixtureRequest) -> EnqueuedTasks:
    """The tasks enqueued during the test (:class:`django_qtasks.testing.EnqueuedTasks`):
    ``qtasks_enqueued.names``, ``.filter(...)``, ``.assert_enqueued(task, args=...)``."""
    _require_db(request)
    from django_qtasks.contrib.testing import EnqueuedTasks

    return EnqueuedTasks()


__all__ = ["qtasks_enqueued", "qtasks_immediate", "qtasks_run_pending"]
