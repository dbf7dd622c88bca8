"""The claim's row decoder (PostgreSQL's hot path), property-based: any JSON text in
the arguments' columns gives either a snapshot whose arguments are a list and an
object, or BadRow carrying a snapshot to fail the row by; never another exception."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from django_qtasks.api.options import MAX_DEPTH
from django_qtasks.storage.rows import _CLAIM_COLUMNS, BadRow, _snapshot_from_pg_row

KNOWN = {"status": "process", "worker_id": "w", "started_at": None, "updated_at": None,
         "returning": None, "finished_at": None}  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


def row(args: str, kwargs: str) -> list[Any]:
    now = timezone.now()
    values = {"uuid": uuid.uuid4(), "task_name": "t", "priority": 0, "queue": "default",
              "args": args, "kwargs": kwargs, "traceback": "", "errors": "[]", "attempt": 1,
              "max_retries": 0, "run_after": now, "created_at": now, "unique_key": None,
              "cancel_requested": False, "progress": None, "tags": "[]", "flow_id": None,
              "flow_stage": None, "flow_index": None, "concurrency_key": None,
              "max_concurrency": None}  # fmt: skip
    return [values[name] for name in _CLAIM_COLUMNS]


def nest(value: Any, depth: int) -> str:
    return "[" * depth + json.dumps(value) + "]" * depth


def decode(args: str, kwargs: str) -> Any:
    """The snapshot, or the BadRow raised (returned, to assert on it)."""
    try:
        return _snapshot_from_pg_row(row(args, kwargs), KNOWN)
    except BadRow as exc:
        return exc


@settings(max_examples=300, deadline=None)
@given(args=json_values, kwargs=json_values, depth=st.integers(0, 3 * MAX_DEPTH))
def test_any_json_decodes_or_fails_alone(args: Any, kwargs: Any, depth: int) -> None:
    result = decode(nest(args, depth), json.dumps(kwargs))
    if isinstance(result, BadRow):
        assert "cannot be run" in str(result)
        assert (result.task.args, result.task.kwargs) == ([], {})
    else:
        assert isinstance(result.args, list)
        assert isinstance(result.kwargs, dict)
        assert depth <= MAX_DEPTH


def test_json_nested_past_the_decoder_is_a_bad_row() -> None:
    result = decode("[" * 100_000 + "]" * 100_000, "{}")  # past any recursion limit
    assert isinstance(result, BadRow)
    assert "nests" in str(result)
