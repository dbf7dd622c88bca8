"""The claim's row decoder (PostgreSQL's hot path), property-based: any JSON text in
the arguments' columns gives either a snapshot whose arguments are a list and an
object, or BadRow carrying a snapshot to fail the row by; never another exception."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from django_qtasks.api.options import MAX_DEPTH
from django_qtasks.storage.rows import (
    _CLAIM_COLUMNS,
    MAX_ATTEMPT,
    BadRow,
    _snapshot_from_row,
    nests_deeper,
)

KNOWN = {"status": "process", "worker_id": "w", "started_at": None, "updated_at": None,
         "returning": None, "finished_at": None}  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


def row(args: str, kwargs: str, **columns: Any) -> list[Any]:
    now = timezone.now()
    values = {"uuid": uuid.uuid4(), "task_name": "t", "priority": 0, "queue": "default",
              "args": args, "kwargs": kwargs, "traceback": "", "errors": "[]", "attempt": 1,
              "max_retries": 0, "rescues": 0, "run_after": now, "created_at": now,
              "unique_key": None, "cancel_requested": False, "progress": None, "tags": "[]",
              "flow_id": None, "flow_stage": None, "flow_index": None, "concurrency_key": None,
              "max_concurrency": None, **columns}  # fmt: skip
    return [values[name] for name in _CLAIM_COLUMNS]


def nest(value: Any, depth: int) -> str:
    return "[" * depth + json.dumps(value) + "]" * depth


def depth(value: Any) -> int:
    """How many levels of lists and dicts ``value`` nests (written recursively, unlike
    the code under test)."""
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def decode(args: str, kwargs: str, **columns: Any) -> Any:
    """The snapshot, or the BadRow raised (returned, to assert on it)."""
    try:
        return _snapshot_from_row(row(args, kwargs, **columns), KNOWN)
    except BadRow as exc:
        return exc


@settings(max_examples=300, deadline=None)
@given(args=json_values, kwargs=json_values, levels=st.integers(0, 3 * MAX_DEPTH))
def test_any_json_decodes_or_fails_alone(args: Any, kwargs: Any, levels: int) -> None:
    text = nest(args, levels)
    result = decode(text, json.dumps(kwargs))
    if isinstance(result, BadRow):
        assert "cannot be run" in str(result)
        assert (result.task.args, result.task.kwargs) == ([], {})
    else:
        assert isinstance(result.args, list)
        assert isinstance(result.kwargs, dict)
    # Exactly what enqueueing allows: arguments nested MAX_DEPTH deep, one level down
    # (in the args array or the kwargs object), and nothing else.
    decoded = json.loads(text)
    refused = (
        not isinstance(decoded, list)
        or not isinstance(kwargs, dict)
        or depth(decoded) > MAX_DEPTH + 1
        or depth(kwargs) > MAX_DEPTH + 1
    )
    assert isinstance(result, BadRow) == refused


@settings(max_examples=300, deadline=None)
@given(value=json_values, extra=st.integers(0, 2 * MAX_DEPTH), limit=st.integers(0, 40))
def test_the_depth_walk_agrees_with_a_recursive_count(value: Any, extra: int, limit: int) -> None:
    value = json.loads(nest(value, extra))
    assert nests_deeper(value, limit) == (depth(value) > limit)


@pytest.mark.parametrize(
    ("columns", "problem"),
    [
        ({"args": "not json"}, "cannot be decoded"),
        ({"attempt": MAX_ATTEMPT}, "attempt (2147483647) is at the limit"),
        ({"max_retries": 2**31 - 1}, "max_retries (2147483647) is more than 1,000,000"),
        ({"priority": "high"}, "priority ('high') is not an integer"),
        ({"task_name": 7}, "task_name (7) is not text"),
    ],
)
def test_a_bad_column_is_a_bad_row_naming_it(columns: dict[str, Any], problem: str) -> None:
    columns.setdefault("args", "[]")
    result = decode(kwargs="{}", **columns)
    assert isinstance(result, BadRow)
    assert problem in str(result)
    assert isinstance(result.task.priority, int)  # the stand-in sorts and logs


def test_json_nested_past_the_decoder_is_a_bad_row() -> None:
    result = decode("[" * 100_000 + "]" * 100_000, "{}")  # past any recursion limit
    assert isinstance(result, BadRow)
    assert "nests" in str(result)
