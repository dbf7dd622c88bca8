"""The docs' runnable examples, run: every ```python block marked ``<!-- runs -->`` on the
line above its fence is executed, in page order, in one module namespace per page, while
a real worker (the library's Starter and ThreadWorker, in a thread of this process, on
the test database) runs the tasks the blocks enqueue. A block that raises, or whose own
``assert`` lines fail, fails the test: a page whose example stops matching the code fails
here.

``<!-- runs; then: EXPR -->`` also evaluates ``EXPR`` after the block (``asyncio`` is at
hand), for examples that only define a coroutine. The quickstart has a test of its own
(test_quickstart.py), run in a fresh project.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from django_qtasks import app as project_app
from tests.docs.markdown import DOCS, Block, blocks

THEN = "; then:"


def runnable(page: str) -> list[Block]:
    return [b for b in blocks(page) if b.marker == "runs" or b.marker.startswith("runs" + THEN)]


PAGES = sorted(p.name for p in DOCS.glob("*.md") if runnable(p.name))


@pytest.fixture
def live_worker(transactional_db: None) -> Iterator[None]:
    """A worker of the project's app with its default threads, until the test ends."""
    starter = project_app.build_starter(concurrency=4, poll_interval=0.05)
    thread = threading.Thread(target=starter.run, kwargs={"install_signals": False})
    thread.start()
    try:
        yield
    finally:
        starter.request_stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the worker did not stop"


def test_pages_have_runnable_examples() -> None:
    assert {"workflows.md", "tasks.md", "concurrency-limits.md"} <= set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_runnable_examples_run(page: str, live_worker: None) -> None:
    name = "docs_examples_" + page.removesuffix(".md").replace("-", "_")
    module = types.ModuleType(name)  # the blocks' tasks are registered under this name
    module.__dict__["asyncio"] = asyncio
    sys.modules[name] = module
    try:
        for block in runnable(page):
            try:
                exec(compile(block.text, block.where, "exec"), module.__dict__)
                if THEN in block.marker:
                    expr = block.marker.split(THEN, 1)[1].strip()
                    assert eval(expr, module.__dict__), f"{expr} is false"
            except Exception as exc:
                pytest.fail(f"{block.where}: {type(exc).__name__}: {exc}")
    finally:
        del sys.modules[name]
        # An awaited example ran its queries in asgiref's one thread for sync code: close
        # that thread's connection too, or the test database cannot be dropped.
        asyncio.run(sync_to_async(connections.close_all)())
