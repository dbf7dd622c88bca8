"""The enqueue boundary: every value that cannot be stored, or would later stop a
worker, is refused with InvalidTaskCall naming it, before anything is written, on
every entry point (add_task, add_tasks, a pending call, flows, django.tasks)."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_qtasks import app
from django_qtasks.api.options import MAX_DEPTH, EnqueueOptions, check_json
from django_qtasks.api.workflows import chain
from django_qtasks.exceptions import InvalidTaskCall
from django_qtasks.models import TaskRecord
from tests.testapp import tasks

pytestmark = pytest.mark.django_db


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


BAD_ARGUMENTS = [
    pytest.param((nested(985),), {}, "nests", id="list-985-deep"),
    pytest.param((), {"a": nested(MAX_DEPTH + 1)}, "'a' nests", id="kwarg-too-deep"),
    pytest.param(({"k": nested(MAX_DEPTH)},), {}, "nests", id="dict-then-list"),
    pytest.param(("a\x00b",), {}, "positional argument 0 holds a NUL", id="nul"),
    pytest.param(([{"x\x00": 1}],), {}, "NUL", id="nul-in-a-key"),
    pytest.param(("\ud800",), {}, "lone surrogate", id="lone-high-surrogate"),
    pytest.param((), {"b": ["x\udc00"]}, "'b' holds a lone surrogate", id="lone-low-surrogate"),
]


@pytest.mark.parametrize(("args", "kwargs", "match"), BAD_ARGUMENTS)
def test_bad_arguments_are_refused_before_anything_is_written(
    args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    with transaction.atomic():
        with pytest.raises(InvalidTaskCall, match=match):
            app.add_task("tests.record", *args, **kwargs)
        with pytest.raises(InvalidTaskCall, match=match):
            app.add_tasks([("tests.record", args, kwargs)])
        with pytest.raises(InvalidTaskCall, match=match):
            chain(tasks.record(*args, **kwargs), tasks.record("x")).add_task()
        # The caller's transaction is still usable: nothing reached the database.
        assert TaskRecord.objects.count() == 0


def test_what_is_allowed_is_stored_as_given() -> None:
    """The limits refuse only what is past them: escapes that look like the refused ones
    (an escaped backslash before u0000, a surrogate pair) and nesting at the limit."""
    values = ["\\u0000", "\\\\ud800", "emoji \U0001f600", nested(MAX_DEPTH - 1)]
    task = app.add_task("tests.record", *values)
    assert TaskRecord.objects.get(uuid=task.uuid).args == values


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"timeout": math.nan}, "timeout"),
        ({"timeout": "5"}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"run_after": math.nan}, "run_after"),
        ({"run_after": math.inf}, "run_after"),
        ({"run_after": 10**30}, "run_after"),
        ({"run_after": dt.timedelta(days=999_999_999)}, "run_after"),
        ({"priority": 2**15}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"unique_key": "k" * 256}, "unique_key must be at most 255 characters, got 256"),
        ({"unique_key": ""}, "unique_key"),
        ({"unique_key": "a\x00"}, "unique_key holds a NUL"),
        ({"concurrency_key": "c" * 300}, "concurrency_key"),
        ({"queue": "a/b"}, "queue"),
    ],
)
def test_bad_options_are_refused_naming_them(options: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidTaskCall, match=match):
        tasks.record.add_task("x", **options)
    with pytest.raises(InvalidTaskCall, match=match):
        tasks.record("x").add_task(**options)
    with pytest.raises(InvalidTaskCall, match=match):
        app.add_task("tests.record", "x", **options)
    assert TaskRecord.objects.count() == 0


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("", "task_name must be a non-empty"),
        ("t" * 256, "task_name must be at most 255 characters"),
        (None, "task_name"),
    ],
)
def test_bad_task_names_are_refused(name: Any, match: str) -> None:
    with pytest.raises(InvalidTaskCall, match=match):
        app.add_task(name)
    with pytest.raises(InvalidTaskCall, match=match):
        app.add_tasks([(name, (), {})])
    assert TaskRecord.objects.count() == 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (("tests.record", "abc", {}), "args must be a list or tuple"),
        (("tests.record", {"key": "x"}, {}), "args must be a list or tuple"),
        (("tests.record", ["x"], ["y"]), "kwargs must be a dict"),
        (("tests.record", [], {1: "x"}), "kwargs keys must be strings"),
        (("tests.record", ["x"]), "call 0 must be"),
        ("tests.record", "call 0 must be"),
    ],
)
def test_add_tasks_refuses_calls_of_the_wrong_shape(call: Any, match: str) -> None:
    with pytest.raises(InvalidTaskCall, match=match):
        app.add_tasks([call])
    assert TaskRecord.objects.count() == 0


def test_a_tasks_add_tasks_refuses_a_string_as_the_argument_tuple() -> None:
    with pytest.raises(
        InvalidTaskCall, match="args must be a list or tuple of positional arguments, got str"
    ):
        tasks.record.add_tasks(["abc"])
    assert TaskRecord.objects.count() == 0


def test_waiting_with_a_nan_timeout_is_refused() -> None:
    task = tasks.record.add_task("x")
    with pytest.raises(InvalidTaskCall, match="timeout"):
        app.wait(task.uuid, math.nan)


def test_enqueue_options_are_validated_once_when_built() -> None:
    with pytest.raises(InvalidTaskCall, match="priority"):
        EnqueueOptions(priority=1000)
    options = EnqueueOptions(priority=5, queue="q1")
    spec = app.build_spec("tests.record", ["x"], {}, options)
    assert (spec.priority, spec.queue) == (5, "q1")
    with pytest.raises(TypeError, match="not both"):
        app.build_spec("tests.record", ["x"], {}, options, priority=1)


# -- property-based: any JSON value, any nesting, any string ----------------------------


def _json(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=5), children, max_size=3)
        ),
        max_leaves=20,
    )


# Floats only where nothing is read back: PostgreSQL's jsonb keeps a number's decimal
# digits, not the float, so 6.07197543340129e16 comes back as an integer.
json_values = _json(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
stored_values = _json(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text())


def _deep(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value] if depth % 2 else {"k": value}
    return value


def _storable(value: Any, depth: int = 0) -> bool:
    """What the limits promise: nesting at most MAX_DEPTH, strings without NUL or lone
    surrogates (written recursively, unlike the code under test)."""
    if isinstance(value, str):
        return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return depth < MAX_DEPTH and all(_storable(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return (
            depth < MAX_DEPTH
            and all(_storable(k) for k in value)
            and all(_storable(v, depth + 1) for v in value.values())
        )
    return True


@settings(max_examples=200, deadline=None)
@given(value=json_values, depth=st.integers(0, 2 * MAX_DEPTH))
def test_check_json_accepts_exactly_what_can_be_stored(value: Any, depth: int) -> None:
    value = _deep(value, depth)
    try:
        args, _ = check_json([value], {}, None)
    except InvalidTaskCall:
        assert not _storable(value)
    else:
        assert _storable(value)
        assert json.loads(args) == [value]


# A transaction per example: hypothesis runs them all inside one test (one database
# transaction), so a stored row is checked and rolled back by hand.
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=stored_values, depth=st.integers(0, MAX_DEPTH + 5), key=st.text(max_size=300))
def test_add_task_either_refuses_before_writing_or_stores_what_it_was_given(
    value: Any, depth: int, key: str
) -> None:
    value = _deep(value, depth)
    enqueue: Callable[[], Any] = lambda: app.add_task("tests.record", value, unique_key=key)  # noqa: E731
    with transaction.atomic():
        try:
            task = enqueue()
        except InvalidTaskCall:
            assert not (_storable(value) and _storable(key) and 0 < len(key) <= 255)
            assert TaskRecord.objects.count() == 0
        else:
            assert TaskRecord.objects.get(uuid=task.uuid).args == [value]
        transaction.set_rollback(True)
