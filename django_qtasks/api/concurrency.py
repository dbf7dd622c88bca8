"""Concurrency limits, as a task declares them: the options' checks and a new task's group.

``@app.task(max_concurrency=n)`` lets at most ``n`` tasks of that name run at once, on
all workers together; with ``concurrency_key`` (a string, or a function of the task's
arguments), at most ``n`` per key. Pure (no I/O): the group and the limit worked out
here are stored on the row, and Storage's claim enforces them
(``django_qtasks.storage.concurrency``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from django_qtasks.exceptions import InvalidTaskCall, TaskRegistrationError

if TYPE_CHECKING:
    from django_qtasks.api.task import TaskOptions

KEY_MAX_LENGTH = 255  # TaskRecord.concurrency_key


def check_options(name: str, values: dict[str, Any]) -> None:
    """Validate ``max_concurrency=`` and ``concurrency_key=`` of ``@app.task``, at
    import time, naming the task."""
    limit = values.get("max_concurrency")
    key = values.get("concurrency_key")
    if limit is None:
        if key is not None:
            raise TaskRegistrationError(
                f"concurrency_key needs max_concurrency (how many may run at once) ({name})."
            )
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise TaskRegistrationError(
            f"max_concurrency must be an integer >= 1, got {limit!r} ({name})."
        )
    if key is not None and not callable(key):
        check_key(key, f"concurrency_key of task {name!r}", error=TaskRegistrationError)


def check_key(key: Any, what: str, *, error: type[Exception] = InvalidTaskCall) -> str:
    if not isinstance(key, str) or not key or len(key) > KEY_MAX_LENGTH:
        raise error(
            f"{what} must be a non-empty string of at most {KEY_MAX_LENGTH} characters, "
            f"got {key!r}."
        )
    return key


def resolve_group(
    options: TaskOptions | None,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    override: str | None,
) -> tuple[str | None, int | None]:
    """The ``(concurrency_key, max_concurrency)`` to store for a new task: ``(None,
    None)`` without a limit; the key is "" when the whole task is one group.

    ``override`` (``add_task(concurrency_key=...)``) wins over the task's option; a
    function option is called with the task's arguments, as the task will be."""
    limit = options.max_concurrency if options is not None else None
    if limit is None:
        if override is not None:
            raise InvalidTaskCall(
                "concurrency_key= needs a task registered with max_concurrency "
                f"(got concurrency_key={override!r})."
            )
        return None, None
    assert options is not None
    if override is not None:
        return check_key(override, "concurrency_key"), limit
    option = options.concurrency_key
    if option is None:
        return "", limit
    if isinstance(option, str):
        return option, limit
    key = _call_key_function(option, options.name, args, kwargs)
    what = f"The key returned by the concurrency_key function of task {options.name!r}"
    return check_key(key, what), limit


def _call_key_function(
    function: Callable[..., Any], name: str, args: Sequence[Any], kwargs: dict[str, Any]
) -> Any:
    try:
        return function(*args, **kwargs)
    except Exception as exc:
        raise InvalidTaskCall(
            f"The concurrency_key function of task {name!r} failed for this call "
            f"({type(exc).__name__}: {exc}). It receives the task's arguments: "
            "def key(account_id, **kwargs): ..."
        ) from exc
