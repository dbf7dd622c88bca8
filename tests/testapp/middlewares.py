"""Middlewares used by the tests: they log what they see into a list."""

from __future__ import annotations

from typing import Any

CALLS: list[tuple[str, str, Any]] = []


class Recorder:
    def before(self, ctx: Any) -> None:
        CALLS.append(("before", ctx.task_name, ctx.attempt))

    def after(self, ctx: Any, outcome: Any) -> None:
        CALLS.append(("after", ctx.task_name, outcome.status))


class FailsAfter:
    def before(self, ctx: Any) -> None:
        pass

    def after(self, ctx: Any, outcome: Any) -> None:
        raise RuntimeError("middleware broke")


class FailsBefore:
    def before(self, ctx: Any) -> None:
        raise RuntimeError("middleware refused")

    def after(self, ctx: Any, outcome: Any) -> None:
        pass
