"""The plain values the layers hand each other: the ``Task`` snapshot, ``TaskSpec`` and
``Outcome``.

The user's API returns them, the Broker and Storage take and return them, the worker
side runs on them: they sit below every component, so that each layer imports them
without importing the one above it. Nothing here does I/O or imports a component, and
nothing imports Django: the package's ``__init__`` imports this module before Django's
apps are ready (see :func:`use_project_app`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

if TYPE_CHECKING:
    from django_qtasks.models import TaskRecord

# models.FINISHED_STATUSES, as the plain strings a snapshot's status holds (this module
# imports no Django); tests/unit/test_values.py keeps the two the same.
_FINISHED = frozenset({"success", "error", "cancel"})


def progress_fraction(progress: Any) -> float | None:
    """How far a task's progress (``{"done": n, "total": m}``, as ``set_progress()``
    stores it) has got, from 0.0 to 1.0; None when it says nothing a bar can show: no
    positive total, values that are not numbers, or numbers past a float's range (a
    row written by another program may hold any JSON there)."""
    if not isinstance(progress, dict):
        return None
    done, total = progress.get("done"), progress.get("total")
    numbers = (int, float)
    if not isinstance(done, numbers) or not isinstance(total, numbers) or total <= 0:
        return None
    try:
        fraction = done / total
    except OverflowError:
        return None
    return float(min(max(fraction, 0.0), 1.0)) if math.isfinite(fraction) else None


def error_entries(errors: Any) -> list[dict[str, Any]]:
    """The entries of a task's error history (``errors``: a list of objects, one per
    failed attempt) that are objects; anything else a row written by another program
    holds there (a number, text, an object instead of the list) is left out."""
    if not isinstance(errors, list):
        return []
    return [entry for entry in errors if isinstance(entry, dict)]


class ProjectApp(Protocol):
    """What ``Task.cancel()`` and ``Task.refresh()`` use of the project's app."""

    def get(self, uuid: UUID) -> Task | None: ...
    def cancel(self, uuid: UUID, reason: str = "") -> Task | None: ...


_project_app_getter: Callable[[], ProjectApp] | None = None


def use_project_app(getter: Callable[[], ProjectApp]) -> None:
    """Name the project's app (``django_qtasks.app``) for ``Task.cancel()`` and
    ``refresh()``, which the docs promise go through it.

    The package's ``__init__``, which builds that app on first use, calls this when it
    is imported, so before any snapshot exists. The snapshot is a value below the API:
    it is given the way to the app instead of importing the package above it."""
    global _project_app_getter
    _project_app_getter = getter


def _project_app() -> ProjectApp:
    if _project_app_getter is None:  # pragma: no cover: django_qtasks/__init__.py sets it
        raise RuntimeError("django_qtasks.values.use_project_app() was never called.")
    return _project_app_getter()


@dataclass(frozen=True)
class Task:
    """A read-only snapshot of one task row, as ``add_task()``/``get()`` return it."""

    uuid: UUID
    task_name: str
    status: str
    priority: int
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    returning: Any
    traceback: str
    errors: list[dict[str, Any]]
    attempt: int
    max_retries: int
    run_after: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    worker_id: str
    unique_key: str | None
    cancel_requested: bool
    progress: dict[str, Any] | None
    tags: list[str]
    # Runs lost to the worker, not to the task (its worker died, the database cut its
    # connection): each sent the task back to waiting without spending an attempt, up
    # to QTASKS["MAX_RESCUES"] (docs/reliability.md#the-rescue-allowance).
    rescues: int = 0
    # Chains and groups: see TaskRecord and docs/workflows.md. A finished task with a
    # ``flow_id`` may release (or cancel) the next stage of its flow.
    flow_id: UUID | None = None
    flow_stage: int | None = None
    flow_index: int | None = None
    # Concurrency limits (docs/concurrency-limits.md): the task's group within its task
    # name ("" for the whole task) and how many of the group may run at once.
    concurrency_key: str | None = None
    max_concurrency: int | None = None

    @classmethod
    def from_record(cls, record: TaskRecord) -> Task:
        values = {name: getattr(record, name) for name in _SNAPSHOT_FIELDS}
        values["status"] = str(values["status"])  # a plain string, however the row was made
        return cls.from_fields(values)

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> Task:
        """A snapshot from a mapping that names every field once, as the claim and the
        bulk enqueue build it per row. It skips the generated ``__init__``: a frozen
        dataclass sets each of its fields through ``object.__setattr__``, which cost
        more than the rest of turning a claimed row into a snapshot."""
        if values.keys() != _FIELD_SET:
            raise TypeError(f"Task fields missing or unknown: {values.keys() ^ _FIELD_SET}")
        task = object.__new__(cls)
        task.__dict__.update(values)
        return task

    @property
    def is_finished(self) -> bool:
        """True once the status is final: ``success``, ``error`` or ``cancel``."""
        return self.status in _FINISHED

    def cancel(self, reason: str = "") -> Task | None:
        """Cancel this task through the project's app (see ``QueueTasks.cancel``)."""
        return _project_app().cancel(self.uuid, reason)

    def refresh(self) -> Task | None:
        """A fresh snapshot of this task (``None`` if the row is gone)."""
        return _project_app().get(self.uuid)

    @property
    def duration(self) -> dt.timedelta | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


_SNAPSHOT_FIELDS = tuple(Task.__dataclass_fields__)
_FIELD_SET = frozenset(_SNAPSHOT_FIELDS)


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to store one new task; built by pure functions, no I/O."""

    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    priority: int
    run_after: dt.datetime | None
    max_retries: int
    unique_key: str | None = None
    tags: list[str] = field(default_factory=list)
    # ``args`` and ``kwargs`` as the JSON text to store, when the builder has encoded
    # them already (it must, to validate them): Storage writes it as it is.
    encoded: tuple[str, str] | None = None
    # Its place in a chain or group (see django_qtasks.workflows); a ``blocked`` task
    # waits for the stage before it instead of being ready at once.
    flow_id: UUID | None = None
    flow_stage: int | None = None
    flow_index: int | None = None
    blocked: bool = False
    # The concurrency group ("" for the whole task) and its limit; both None: no limit.
    concurrency_key: str | None = None
    max_concurrency: int | None = None


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, as the TaskExecutor reports it to the Worker.

    ``status`` is ``success``, ``error``, ``retry`` or ``cancel``; ``error`` is the
    JSON summary of the exception (type and message) and ``run_after`` the time of
    the next attempt for ``retry``.
    """

    status: str
    returning: Any = None
    error: dict[str, Any] | None = None
    traceback: str = ""
    run_after: dt.datetime | None = None
    # ``returning`` as the JSON text to store, when the executor encoded it already.
    returning_json: str | None = None
    # The run was lost to the worker, not failed by the task (the database cut the
    # worker's connection): it goes back to the queue as a rescue, its attempt unspent,
    # at ``run_after``; ``error`` says what happened.
    lost: bool = False
