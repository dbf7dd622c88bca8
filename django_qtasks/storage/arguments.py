"""What a task's arguments may be: JSON that every supported database stores and every
worker decodes.

The rules are the databases': PostgreSQL's text and jsonb refuse NUL, MariaDB's JSON
check refuses deep nesting, no database stores a lone surrogate. The API checks a call
against them before it stores anything (:func:`check_json`, through
``django_qtasks.api.options``), and the row decoder (``storage/rows.py``) applies the same
limit to what it reads back, so both live here, below the API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from django_qtasks.exceptions import InvalidTaskCall

# The deepest nesting of lists and dicts an argument may have. Decoding a row costs
# stack in proportion to it, and a worker must always be able to decode what it claims.
# 31: MariaDB's JSON check (JSON_VALID) refuses a document nested over 31 levels, and an
# argument sits one level down in the args array (or the kwargs object). One limit on
# every database, so a project can move between them.
MAX_DEPTH = 30
# One encoder for every call: json.dumps(..., allow_nan=False) builds a new one each time.
# ensure_ascii (the default) makes a NUL or a surrogate visible as an escape in the text.
_encode_json = json.JSONEncoder(allow_nan=False).encode
# An escape no database stores: NUL (PostgreSQL's jsonb and text refuse it) or a
# surrogate (paired ones are how ensure_ascii writes characters beyond U+FFFF, so those
# are checked exactly on the values). Preceded by an even number of backslashes, so an
# escaped backslash followed by "u0000" is not one.
_SUSPECT_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u(?:0000|[dD][89a-fA-F])")


def check_json(
    args: Sequence[Any], kwargs: dict[str, Any], max_bytes: int | None
) -> tuple[str, str]:
    """Encode the arguments as the JSON that will be stored (once: the enqueue path is
    hot), failing before anything is stored if an argument would not survive JSON or
    the databases (the error names it), nests deeper than :data:`MAX_DEPTH`, or if
    they are too big to belong in a queue row."""
    try:
        # Empty ones are common (most calls have no keyword arguments): no encoder.
        encoded = (
            _encode_json(list(args)) if args else "[]",
            _encode_json(kwargs) if kwargs else "{}",
        )
    except (TypeError, ValueError, RecursionError):
        _raise_for_bad_argument(args, kwargs)
        raise
    size = len(encoded[0]) + len(encoded[1])
    if max_bytes is not None and size > max_bytes:
        raise InvalidTaskCall(
            f"The task's arguments take {size:,} bytes as JSON, more than "
            f"QTASKS['MAX_ARGS_SIZE'] ({max_bytes:,}). Store large data elsewhere (a file, "
            "a model) and pass its id."
        )
    # Cheap tests on the text first (enqueueing is a hot path): nesting past the limit
    # needs that many brackets, and a refused string an escape.
    deep = size > MAX_DEPTH and sum(text.count(c) for text in encoded for c in "[{") > MAX_DEPTH
    args_text, kwargs_text = encoded
    if (
        deep
        or ("\\u" in args_text and _SUSPECT_ESCAPE.search(args_text))
        or ("\\u" in kwargs_text and _SUSPECT_ESCAPE.search(kwargs_text))
    ):
        for label, value in _labelled(args, kwargs):
            check_value(label, value)
    return encoded


def check_value(label: str, value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`InvalidTaskCall` naming ``label`` if ``value`` (decoded JSON)
    nests deeper than ``max_depth`` or holds a string with NUL or a lone surrogate.
    Iterative, so that any depth is examined without recursion."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            check_text(label, item)
        elif isinstance(item, (list, tuple, dict)):
            if depth >= max_depth:
                raise InvalidTaskCall(
                    f"{label} nests lists or dicts more than {max_depth} deep: "
                    "a task's arguments must be flatter."
                )
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)


def check_text(label: str, text: str) -> None:
    if "\x00" in text:
        raise InvalidTaskCall(f"{label} holds a NUL character, which the database cannot store.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidTaskCall(
            f"{label} holds a lone surrogate (not valid Unicode), which the database cannot store."
        ) from None


def _labelled(args: Sequence[Any], kwargs: dict[str, Any]) -> list[tuple[str, Any]]:
    labelled = [(f"positional argument {i}", value) for i, value in enumerate(args)]
    labelled += [(f"argument {name!r}", value) for name, value in kwargs.items()]
    return labelled


def _raise_for_bad_argument(args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Find which argument cannot be encoded, and say so."""
    for label, value in _labelled(args, kwargs):
        check_value(label, value)  # too deep for the encoder: say so, not RecursionError
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{label} ({type(value).__name__}) is not JSON-serializable: {exc}. "
                "Task arguments are stored as JSON: pass ids, strings, numbers, lists and "
                "dicts."
            ) from None
