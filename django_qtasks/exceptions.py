"""One exception root for the library, with specific subclasses.

Configuration errors subclass Django's ``ImproperlyConfigured`` so that they read
like every other settings error a Django developer has met.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from django_qtasks.values import Task


class QTasksError(Exception):
    """Base of every error raised by django-qtasks."""


class ConfigurationError(QTasksError, ImproperlyConfigured):
    """The ``QTASKS`` setting (or a component built from it) is wrong."""


class TaskRegistrationError(QTasksError):
    """A task could not be registered (for example: its name is taken)."""


class TaskNotRegistered(QTasksError, LookupError):
    """No task with this name is registered in this process."""


class InvalidTaskCall(QTasksError, ValueError):
    """``add_task()`` got a reserved option with a wrong value (priority, queue, ...)."""


class ResultTimeout(QTasksError, TimeoutError):
    """The task did not finish before the timeout passed.

    ``task`` holds the last snapshot read, so the caller keeps the uuid and status.
    """

    def __init__(self, message: str, task: Task | None = None) -> None:
        super().__init__(message)
        self.task = task


class FlowFailed(QTasksError):
    """A task of a group did not succeed, so the group has no list of results.

    ``task`` is the first such task, as it was read.
    """

    def __init__(self, message: str, task: Task) -> None:
        super().__init__(message)
        self.task = task


class TaskCancelled(QTasksError):
    """Raised inside a running task when it is cancelled; ends the task as ``cancel``."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "cancelled")
        self.reason = reason


class WouldDeadlock(QTasksError):
    """Waiting for a task inside ``transaction.atomic()`` can never succeed.

    The task row is not committed yet, so no worker can see it.
    """


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """The JSON-safe summary of an exception kept in a task's error history."""
    cls = type(exc)
    return {"type": f"{cls.__module__}.{cls.__qualname__}", "message": _safe_message(exc)}


def _safe_message(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when that raises: a task's exception is user code,
    and describing it must never fail (the worker thread and its task depend on it)."""
    try:
        message = str(exc)
    except BaseException:  # any error of a user's __str__, even SystemExit
        return f"<{type(exc).__qualname__}: str() failed>"
    return message


class WorkerLost(QTasksError):
    """Recorded (never raised) when a task's worker died or left before it finished."""


class OutcomeNotStored(QTasksError):
    """Recorded (never raised) when the database refused a task's outcome for good."""


class TaskConflict(QTasksError):
    """The change would give two waiting or running tasks the same ``unique_key``."""


class TaskNotFound(QTasksError, LookupError):
    """No task row has this uuid (it may have been pruned)."""
