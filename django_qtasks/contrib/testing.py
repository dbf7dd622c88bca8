"""Helpers for a project's own tests: run tasks in the test's thread, assert what was
enqueued. They work with Django's ``TestCase`` and with pytest-django (whose fixtures,
in :mod:`django_qtasks.pytest_plugin`, wrap these functions).

Tasks run through the worker's own code (:mod:`django_qtasks.inline`): claimed from
the queue, run by the executor with the middlewares, retries and time limits, stored
with the same statuses and error history. What passes here passes on ``qtasks_worker``.

- :func:`immediate`: ``add_task()`` runs each task at once (on commit inside
  ``transaction.atomic()``), as ``QTASKS["MODE"] = "immediate"`` does.
- :func:`run_pending_tasks`: drain the queue in claim order, deterministically.
- :func:`run_task`: run one waiting task now, even one scheduled for later.
- :func:`assert_task_enqueued`, :func:`assert_task_not_enqueued`,
  :class:`EnqueuedTasks`: what is in the queue, with failure messages that list it.
"""

from __future__ import annotations

import json
import uuid as uuid_lib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.test.utils import override_settings

from django_qtasks.api.task import BaseTask
from django_qtasks.exceptions import QTasksError, TaskNotFound
from django_qtasks.storage import reads
from django_qtasks.values import Task
from django_qtasks.worker.inline import InlineWorker

if TYPE_CHECKING:
    from django_qtasks.api.queue_tasks import BaseQueueTasks

DEFAULT_MAX_TASKS = 1000


class TooManyTasks(QTasksError, AssertionError):
    """``run_pending_tasks`` ran ``max_tasks`` tasks and more were still ready: most
    likely a task that enqueues another one (or itself) every time it runs."""


class NotWaiting(QTasksError, AssertionError):
    """``run_task`` was given a task that is not waiting (already run, running or gone)."""


def _project_app(app: BaseQueueTasks | None) -> BaseQueueTasks:
    if app is not None:
        return app
    from django_qtasks import app as project_app

    return project_app


# -- running tasks ------------------------------------------------------------------------
def immediate() -> override_settings:
    """``QTASKS["MODE"] = "immediate"`` for a block, a test or a ``TestCase`` class: a
    context manager and a decorator (it is Django's ``override_settings``, the rest of
    ``QTASKS`` kept as it is when ``immediate()`` is called)."""
    current = getattr(django_settings, "QTASKS", None) or {}
    return override_settings(QTASKS={**current, "MODE": "immediate"})


def run_task(
    task: Task | uuid_lib.UUID | str, *, retries: bool = True, app: BaseQueueTasks | None = None
) -> Task:
    """Run one waiting task now, in this thread, whatever its ``run_after`` (a task
    scheduled for tomorrow runs today), and return it as stored.

    With ``retries`` (the default), a failed attempt that may be retried runs again at
    once, the backoff skipped, until the task is finished; the error history records
    every attempt as a worker would. With ``retries=False`` it is left in ``retry``.
    Raises :class:`NotWaiting` if the task is not ``new`` or ``retry``.
    """
    app = _project_app(app)
    uuid = task.uuid if isinstance(task, Task) else uuid_lib.UUID(str(task))
    ran = InlineWorker(app).run_task(uuid, retries=retries)
    if ran is not None:
        return ran
    current = app.broker.storage.get(uuid)
    if current is None:
        raise TaskNotFound(f"No task with uuid {uuid}.")
    raise NotWaiting(f"Task {_describe(current)} is {current.status!r}: nothing to run.")


def run_pending_tasks(
    queues: Sequence[str] | str | None = None,
    *,
    until_empty: bool = True,
    retries: bool = True,
    max_tasks: int = DEFAULT_MAX_TASKS,
    app: BaseQueueTasks | None = None,
) -> list[Task]:
    """Run the ready tasks in this thread, in claim order (higher priority first, then
    older), and return them as stored, in the order they ran. No threads, no sleeps.

    ``queues``: a queue name or a list of them (default: every queue); paused queues
    are left alone, as a worker leaves them. ``until_empty`` (the default) keeps going
    until nothing is ready, so tasks that the tasks enqueue run too; ``False`` runs
    only those ready when called. Tasks with a future ``run_after`` are not ready (see
    :func:`run_task`). ``retries`` as in :func:`run_task`: each task runs to its end
    before the next is claimed. More than ``max_tasks`` raises :class:`TooManyTasks`.
    """
    app = _project_app(app)
    if isinstance(queues, str):
        queues = [queues]
    worker = InlineWorker(app)
    done: list[Task] = []
    if not until_empty:
        for task in worker.claim_next(queues, limit=max_tasks):
            done.append(worker.run_claimed(task, retries=retries))
        return done
    while claimed := worker.claim_next(queues):
        if len(done) >= max_tasks:
            raise TooManyTasks(
                f"run_pending_tasks() ran {len(done)} tasks and more are ready (next: "
                f"{_describe(claimed[0])}). Does a task enqueue another one every time it "
                "runs? Pass max_tasks= to allow more."
            )
        done.append(worker.run_claimed(claimed[0], retries=retries))
    return done


# -- what was enqueued --------------------------------------------------------------------
def enqueued_tasks(app: BaseQueueTasks | None = None) -> list[Task]:
    """Every task in the queue's table, whatever its status, oldest first."""
    alias = _project_app(app).settings.database
    return [Task.from_record(record) for record in reads.all_tasks(alias)]


class EnqueuedTasks:
    """The tasks enqueued since it was made (or :meth:`clear` ed), read from the table
    at each use: a task enqueued inside a transaction that rolled back is not there, as
    it would not be in production. Iterate over it, ``len()`` it, or assert on it."""

    def __init__(self, app: BaseQueueTasks | None = None) -> None:
        self.app = app
        self._before: set[uuid_lib.UUID] = set()
        self.clear()

    def clear(self) -> None:
        """Forget what was enqueued so far."""
        self._before = {task.uuid for task in enqueued_tasks(self.app)}

    def all(self) -> list[Task]:
        return [task for task in enqueued_tasks(self.app) if task.uuid not in self._before]

    def __iter__(self) -> Iterator[Task]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self.all())

    def __repr__(self) -> str:
        return f"<EnqueuedTasks {[task.task_name for task in self.all()]}>"

    @property
    def names(self) -> list[str]:
        """The task names, in the order they were enqueued."""
        return [task.task_name for task in self.all()]

    def filter(
        self,
        task: Any = None,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        status: str | None = None,
    ) -> list[Task]:
        """The tasks that match every criterion given (``None``: any)."""
        match = _Match(task, args, kwargs, queue=queue, priority=priority, status=status)
        return [candidate for candidate in self.all() if match(candidate)]

    def assert_enqueued(
        self, task: Any, args: Any = None, kwargs: Any = None, **more: Any
    ) -> list[Task]:
        """:func:`assert_task_enqueued` over these tasks."""
        return assert_task_enqueued(task, args, kwargs, tasks=self.all(), **more)

    def assert_not_enqueued(
        self, task: Any, args: Any = None, kwargs: Any = None, **more: Any
    ) -> None:
        """:func:`assert_task_not_enqueued` over these tasks."""
        assert_task_not_enqueued(task, args, kwargs, tasks=self.all(), **more)


def assert_task_enqueued(
    task: Any,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str | None = None,
    priority: int | None = None,
    status: str | None = None,
    count: int | None = None,
    tasks: Sequence[Task] | None = None,
    app: BaseQueueTasks | None = None,
) -> list[Task]:
    """Assert that ``task`` was enqueued with these arguments (and queue, priority,
    status, when given); return the matching tasks. ``count``: exactly that many must
    match (default: at least one). ``tasks``: where to look (default: the whole table).

    ``task`` is a task object (``@app.task``, or a Django ``@task``) or a task name.
    Arguments are compared as stored, after JSON: ``args=(1, 2)`` matches ``[1, 2]``.
    The failure message lists every task that was enqueued instead.
    """
    match = _Match(task, args, kwargs, queue=queue, priority=priority, status=status)
    candidates = list(enqueued_tasks(app) if tasks is None else tasks)
    found = [candidate for candidate in candidates if match(candidate)]
    if (count is None and found) or len(found) == count:
        return found
    expected = "a task" if count is None else f"{count} task(s)"
    raise AssertionError(
        f"Expected {expected} {match} to be enqueued; {len(found)} matched.\n{_listing(candidates)}"
    )


def assert_task_not_enqueued(
    task: Any,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str | None = None,
    priority: int | None = None,
    status: str | None = None,
    tasks: Sequence[Task] | None = None,
    app: BaseQueueTasks | None = None,
) -> None:
    """Assert that no task matching these criteria was enqueued (see
    :func:`assert_task_enqueued`)."""
    match = _Match(task, args, kwargs, queue=queue, priority=priority, status=status)
    candidates = list(enqueued_tasks(app) if tasks is None else tasks)
    found = [candidate for candidate in candidates if match(candidate)]
    if found:
        raise AssertionError(
            f"Expected no task {match} to be enqueued; {len(found)} matched."
            f"\n{_listing(candidates)}"
        )


class _Match:
    """The criteria of an assertion, and how to say them in its message."""

    def __init__(
        self,
        task: Any,
        args: Sequence[Any] | None,
        kwargs: dict[str, Any] | None,
        **fields: Any,
    ) -> None:
        self.name = None if task is None else task_name_of(task)
        self.args = None if args is None else _as_json(list(args))
        self.kwargs = None if kwargs is None else _as_json(dict(kwargs))
        self.fields = {key: value for key, value in fields.items() if value is not None}

    def __call__(self, task: Task) -> bool:
        return (
            (self.name is None or task.task_name == self.name)
            and (self.args is None or task.args == self.args)
            and (self.kwargs is None or task.kwargs == self.kwargs)
            and all(getattr(task, key) == value for key, value in self.fields.items())
        )

    def __str__(self) -> str:
        if self.args is None and self.kwargs is None:
            text = f"{self.name or 'of any name'} (any arguments)"
        else:
            text = _call(self.name or "<any task>", self.args or [], self.kwargs or {})
            if self.args is None or self.kwargs is None:
                text += " (" + ("args" if self.args is None else "kwargs") + ": any)"
        extra = ", ".join(f"{key}={value!r}" for key, value in self.fields.items())
        return f"{text} with {extra}" if extra else text


def task_name_of(task: Any) -> str:
    """The stored name of a task object (ours or Django's), or the name itself."""
    if isinstance(task, str):
        return task
    if isinstance(task, BaseTask):
        return task.name
    if hasattr(task, "module_path"):  # a Django Tasks framework task
        from django_qtasks.contrib.django_tasks import task_name

        return task_name(task)
    raise TypeError(f"Expected a task or a task name, got {type(task).__name__} {task!r}.")


def _as_json(value: Any) -> Any:
    """The value as it is stored: tuples become lists, dict keys strings."""
    return json.loads(json.dumps(value))


def _call(name: str, args: list[Any], kwargs: dict[str, Any]) -> str:
    parts = [repr(arg) for arg in args] + [f"{key}={value!r}" for key, value in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def _describe(task: Task) -> str:
    return (
        f"{_call(task.task_name, task.args, task.kwargs)} queue={task.queue!r} "
        f"priority={task.priority} status={task.status!r}"
    )


def _listing(tasks: Sequence[Task]) -> str:
    if not tasks:
        return "Nothing was enqueued."
    lines = "\n".join(f"  {_describe(task)}" for task in tasks)
    return f"Enqueued ({len(tasks)}):\n{lines}"


__all__ = [
    "EnqueuedTasks",
    "NotWaiting",
    "TooManyTasks",
    "assert_task_enqueued",
    "assert_task_not_enqueued",
    "enqueued_tasks",
    "immediate",
    "run_pending_tasks",
    "run_task",
]
