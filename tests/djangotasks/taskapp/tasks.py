"""Tasks written against Django's Tasks API only: nothing here imports django_qtasks.

``max_retries``, ``retry_backoff`` and ``max_time`` are the extra ``@task`` options the
QTasksBackend's ``task_class`` accepts (documented in docs/django-tasks.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.testapp.models import Execution

from .api import task


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def record(key: str) -> str:
    Execution.objects.create(key=key, started=time.time())
    return key


@task(queue_name="other")
def record_other(key: str) -> str:
    Execution.objects.create(key=key, started=time.time())
    return key


@task
def fail(key: str) -> None:
    Execution.objects.create(key=key)
    raise ValueError(f"boom {key}")


@task(takes_context=True, max_retries=2, retry_backoff=0)
def flaky(context: Any, key: str, failures: int) -> dict[str, Any]:
    """Fails its first ``failures`` attempts; says what it saw of its context."""
    Execution.objects.create(key=key, attempt=context.attempt)
    if context.attempt <= failures:
        raise ConnectionError(f"attempt {context.attempt} failed")
    return {
        "attempt": context.attempt,
        "attempts": context.task_result.attempts,
        "id": context.task_result.id,
        "status": str(context.task_result.status),
        "errors": len(context.task_result.errors),
    }


@task(max_retries=3, retry_on_exc=[ConnectionError], retry_backoff=0)
def not_retried(key: str) -> None:
    Execution.objects.create(key=key)
    raise ValueError("not a ConnectionError")


@task
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@task(takes_context=True)
async def async_context(context: Any, key: str) -> list[Any]:
    return [key, context.attempt, context.task_result.id]


@task(max_time=0.2)
async def too_slow() -> None:
    await asyncio.sleep(30)


@task
def returns_bytes_and_tuples() -> Any:
    return {"data": b"bytes", "pair": (1, 2)}


@task
def returns_object() -> Any:
    return object()


@task
def returns_deep_list(depth: int) -> Any:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@task
def signalled(key: str) -> str:
    return key


def plain_function(key: str) -> None:
    """Not a task: a row naming it must not make a worker call it."""
    Execution.objects.create(key=key)
