"""The two tasks of the django-tasks-db peer (imported by its db_worker by path)."""

from __future__ import annotations

import time

from django.tasks import task


@task()
def noop() -> None:
    return None


@task()
def stamp() -> float:
    return time.time()
