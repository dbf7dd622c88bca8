"""The demo's tasks: one of each shape a real project tends to have.

``django_qtasks`` imports this module in the web process and in the worker (it
autodiscovers ``tasks.py`` in every installed app), so both know the same tasks.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from django_qtasks import app

if TYPE_CHECKING:
    from django_qtasks.worker.context import TaskSelf


@app.task(description="Adds two numbers: the smallest possible round trip.")
def add_numbers(a: int, b: int) -> int:
    return a + b


@app.task(echo=True, tags=["demo", "progress"],
          description="Works through a few steps and reports progress after each.")
def count_slowly(self: TaskSelf, steps: int = 10, delay: float = 0.5) -> str:
    self.ctx.set_progress(0, steps, "starting")
    for step in range(1, steps + 1):
        time.sleep(delay)  # the simulated work
        self.ctx.set_progress(step, steps, f"step {step} of {steps}")
    return f"counted to {steps}"


@app.task(echo=True, retry=3, retry_backoff=1, retry_on_exc=[ConnectionError],
          description="Fails until its last allowed attempt, like a flaky remote service.")
def call_flaky_service(self: TaskSelf) -> str:
    attempt, last = self.ctx.attempt, self.ctx.max_retries + 1
    if attempt < last:
        raise ConnectionError(f"the service did not answer (attempt {attempt} of {last})")
    return f"answered on attempt {attempt} of {last}"


@app.task(description="Waits on several timers at once: async tasks run on an event loop.")
async def wait_together(delays: list[float]) -> str:
    started = time.monotonic()
    await asyncio.gather(*(asyncio.sleep(delay) for delay in delays))
    return (f"{len(delays)} waits adding up to {sum(delays):g} s "
            f"took {time.monotonic() - started:.1f} s")


@app.task(description="Parses JSON; given bad input it fails for good (no retry).")
def parse_json(text: str) -> Any:
    return json.loads(text)
