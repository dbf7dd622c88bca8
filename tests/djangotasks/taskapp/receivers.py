"""Receivers of Django's task signals that leave a trace in the database, so that
tests see the signals a worker *process* sent. Only ``signalled`` tasks are traced."""

from typing import Any

from tests.testapp.models import Execution

from .api import task_enqueued, task_finished, task_started


def _trace(name: str, sender: type, task_result: Any, **kwargs: Any) -> None:
    if task_result.task.name != "signalled":
        return
    Execution.objects.create(
        key=f"signal:{task_result.id}:{name}:{task_result.status}:{sender.__name__}",
        attempt=task_result.attempts,
    )


def on_enqueued(sender: type, task_result: Any, **kwargs: Any) -> None:
    _trace("enqueued", sender, task_result)


def on_started(sender: type, task_result: Any, **kwargs: Any) -> None:
    _trace("started", sender, task_result)


def on_finished(sender: type, task_result: Any, **kwargs: Any) -> None:
    _trace("finished", sender, task_result)


task_enqueued.connect(on_enqueued)
task_started.connect(on_started)
task_finished.connect(on_finished)
