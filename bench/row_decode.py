"""What the claim's depth check costs on rows with many brackets: no database.

    python bench/row_decode.py [--rows 2000] [--rounds 7]

A claimed row whose args hold more brackets than the depth limit is walked once
decoded, to find rows nested past it. Printed per kind of row: the median microseconds
to turn one row into a snapshot (``_snapshot_from_row``), then for the args column
alone: decoded and walked for depth only (``nests_deeper``, what the claim does),
decoded and checked whole (``check_value``, which also examines every string for NUL
and lone surrogates, as enqueueing must, and as the claim did before), and decoded
alone, so each walk's cost is its difference from the last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

from django.utils import timezone  # noqa: E402

from django_qtasks.api.options import MAX_DEPTH, check_value  # noqa: E402
from django_qtasks.storage.rows import _CLAIM_COLUMNS, _snapshot_from_row, nests_deeper  # noqa: E402

KNOWN = {"status": "process", "worker_id": "w", "started_at": None, "updated_at": None,
         "returning": None, "finished_at": None}  # fmt: skip


def deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


KINDS: dict[str, Any] = {
    "100 pairs of ids": [[[i, i + 1] for i in range(100)]],
    "50 records of 4 strings": [[{"id": i, "tags": ["a", "b", "c", "d"]} for i in range(50)]],
    "a 500-word text in lists": [[["word " * 10] for _ in range(50)]],
    f"nested {MAX_DEPTH} deep": [deep(MAX_DEPTH)],
}


def row(args_text: str) -> list[Any]:
    now = timezone.now()
    values = {"uuid": uuid.uuid4(), "task_name": "t", "priority": 0, "queue": "default",
              "args": args_text, "kwargs": "{}", "traceback": "", "errors": "[]", "attempt": 1,
              "max_retries": 0, "run_after": now, "created_at": now, "unique_key": None,
              "cancel_requested": False, "progress": None, "tags": "[]", "flow_id": None,
              "flow_stage": None, "flow_index": None, "concurrency_key": None,
              "max_concurrency": None}  # fmt: skip
    return [values[name] for name in _CLAIM_COLUMNS]


def full_check(text: str) -> None:
    check_value("args", json.loads(text), MAX_DEPTH + 1)


def per_row(rows: list[list[Any]], decode: Callable[[list[Any]], Any]) -> float:
    started = time.perf_counter()
    for one in rows:
        decode(one)
    return (time.perf_counter() - started) / len(rows) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    args_at = _CLAIM_COLUMNS.index("args")
    ways: dict[str, Callable[[list[Any]], Any]] = {
        "whole row (depth walk)": lambda one: _snapshot_from_row(one, KNOWN),
        "json.loads + depth walk": lambda one: nests_deeper(
            json.loads(one[args_at]), MAX_DEPTH + 1
        ),
        "json.loads + check_value": lambda one: full_check(one[args_at]),
        "json.loads alone": lambda one: json.loads(one[args_at]),
    }
    print(f"{'row':28} " + " ".join(f"{name:>26}" for name in ways) + "   (µs per row, median)")
    for kind, args in KINDS.items():
        text = json.dumps(args)
        rows = [row(text) for _ in range(options.rows)]
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(options.rounds):  # taking turns, so drift hits all alike
            for name, decode in ways.items():
                times[name].append(per_row(rows, decode))
        cells = " ".join(f"{statistics.median(t):26.1f}" for t in times.values())
        print(f"{kind:28} {cells}")


if __name__ == "__main__":
    main()
