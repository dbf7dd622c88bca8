"""Chains and groups: tasks that run one after another, or side by side, as one flow.

``chain(a(1), b(), c())`` runs ``a``, then ``b`` with ``a``'s result appended to its
positional arguments, then ``c`` with ``b``'s. ``group(a(1), a(2))`` runs its members
side by side; its results are a list, in member order. A chain may hold groups: each
member gets the result of the step before the group, and the step after it gets the
list of the members' results.

Nothing about a flow lives in a worker's memory. Every task of it is stored when it is
enqueued, in one transaction: the first stage ready (``new``), the later ones
``blocked``. Storage releases a stage in the very transaction that stores the last
result of the stage before, and cancels what follows a task that failed or was
cancelled; so workers may stop, crash or restart between two steps.
"""

from __future__ import annotations

import dataclasses
import time
import uuid as uuid_lib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

from django_qtasks import signals
from django_qtasks.api.options import EnqueueOptions, RunAfter
from django_qtasks.api.task import TaskCls
from django_qtasks.exceptions import FlowFailed
from django_qtasks.models import TaskStatus, uuid7
from django_qtasks.values import Task

if TYPE_CHECKING:
    from django_qtasks.api.queue_tasks import BaseQueueTasks

# One stage of a flow: its pending calls, and whether they are a group (whose results
# are passed on as a list) rather than one chain step (whose result is passed alone).
_Stage = tuple[tuple[TaskCls, ...], bool]


class _Flow:
    """What chains and groups share: they are enqueued stage by stage."""

    def stages(self) -> list[_Stage]:
        raise NotImplementedError

    def result_class(self) -> type[FlowResult]:
        raise NotImplementedError

    def add_task(
        self,
        *,
        priority: int | None = None,
        queue: str | None = None,
        run_after: RunAfter = None,
    ) -> Any:
        """Store every task of the flow; returns a :class:`ChainResult` or
        :class:`GroupResult` (a coroutine of one for an ``AsyncQueueTasks``' tasks).
        ``priority`` and ``queue`` apply to every task; ``run_after`` delays the first
        stage (the others run as soon as the stage before them succeeded)."""
        return _enqueue(self.stages(), self.result_class(), priority, queue, run_after)


class Group(_Flow):
    """Pending calls to run side by side: ``group(a(1), a(2)).add_task()``."""

    def __init__(self, members: Sequence[TaskCls]) -> None:
        if not members:
            raise ValueError("group() needs at least one task call, e.g. group(add(1), add(2)).")
        for position, member in enumerate(members):
            if isinstance(member, (Group, Chain)):
                raise TypeError(
                    f"group() member {position} is a {type(member).__name__.lower()}: groups "
                    "hold task calls only (put the group inside a chain instead)."
                )
            _check_call(member, "group()", position)
        self.members = tuple(members)

    def __repr__(self) -> str:
        return f"<Group {list(self.members)!r}>"

    def stages(self) -> list[_Stage]:
        return [(self.members, True)]

    def result_class(self) -> type[FlowResult]:
        return GroupResult


class Chain(_Flow):
    """Pending calls to run one after another, each given the result of the one
    before as its last positional argument: ``chain(a(1), b(), c()).add_task()``."""

    def __init__(self, steps: Sequence[TaskCls | Group]) -> None:
        if not steps:
            raise ValueError("chain() needs at least one step, e.g. chain(fetch(1), parse()).")
        for position, step in enumerate(steps):
            if not isinstance(step, Group):
                _check_call(step, "chain()", position)
        if isinstance(steps[-1], Group):
            raise ValueError(
                "A chain cannot end with a group: add a step after it that takes the list "
                "of the group's results, or enqueue the group on its own."
            )
        self.steps = tuple(steps)

    def __repr__(self) -> str:
        return f"<Chain {list(self.steps)!r}>"

    def stages(self) -> list[_Stage]:
        return [
            (step.members, True) if isinstance(step, Group) else ((step,), False)
            for step in self.steps
        ]

    def result_class(self) -> type[FlowResult]:
        return ChainResult


def chain(*steps: TaskCls | Group | Chain) -> Chain:
    """A chain of pending calls (and groups); a chain given as a step is spliced in."""
    flat: list[TaskCls | Group] = []
    for step in steps:
        flat.extend(step.steps if isinstance(step, Chain) else (step,))
    return Chain(flat)


def group(*members: TaskCls) -> Group:
    """A group of pending calls, run side by side."""
    return Group(members)


def _check_call(call: Any, where: str, position: int) -> None:
    if not isinstance(call, TaskCls):
        raise TypeError(
            f"{where} step {position} is {type(call).__name__}, not a task call: write "
            "send(1), not send or send.add_task(1)."
        )


@dataclasses.dataclass(frozen=True)
class FlowResult:
    """What ``add_task()`` of a flow returns: its tasks as stored (in immediate mode, as
    they ran), stage by stage."""

    app: BaseQueueTasks
    flow_id: uuid_lib.UUID
    stages: tuple[tuple[Task, ...], ...]

    @property
    def tasks(self) -> list[Task]:
        """Every task of the flow, in flow order."""
        return [task for stage in self.stages for task in stage]

    def refresh(self) -> FlowResult:
        """Fresh snapshots of the same tasks (one left as it was if its row is gone)."""
        stages = tuple(
            tuple(self.app.sync_get(task.uuid) or task for task in stage) for stage in self.stages
        )
        return dataclasses.replace(self, stages=stages)


class ChainResult(FlowResult):
    """A stored chain: ``.last`` is its final step, ``.wait()`` returns it finished."""

    @property
    def last(self) -> Task:
        return self.stages[-1][0]

    def wait(self, timeout: float | None = None) -> Task:
        """The final step once finished: ``success`` with the chain's result, or
        ``cancel`` if an earlier step failed (its ``errors`` say which one)."""
        return self.app.wait(self.last.uuid, timeout)

    async def await_result(self, timeout: float | None = None) -> Task:
        return await self.app.await_result(self.last.uuid, timeout)


class GroupResult(FlowResult):
    """A stored group: ``.wait()`` returns its members finished, ``.results()`` their
    results."""

    def wait(self, timeout: float | None = None) -> list[Task]:
        """Every member once finished, in member order; ``ResultTimeout`` after
        ``timeout`` seconds for them all."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return [self.app.wait(task.uuid, _left(deadline)) for task in self.tasks]

    async def await_result(self, timeout: float | None = None) -> list[Task]:
        deadline = None if timeout is None else time.monotonic() + timeout
        return [await self.app.await_result(task.uuid, _left(deadline)) for task in self.tasks]

    def results(self, timeout: float | None = None) -> list[Any]:
        """The members' results, in member order; :class:`FlowFailed` if one did not
        succeed."""
        finished = self.wait(timeout)
        for task in finished:
            if task.status != TaskStatus.SUCCESS:
                raise FlowFailed(
                    f"Task {task.uuid} ({task.task_name}) of the group ended {task.status}.",
                    task=task,
                )
        return [task.returning for task in finished]


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def _enqueue(
    stages: list[_Stage],
    result_class: type[FlowResult],
    priority: int | None,
    queue: str | None,
    run_after: RunAfter,
) -> Any:
    """Validate and store the flow (a coroutine doing so for an async app)."""
    from django_qtasks.api.queue_tasks import AsyncQueueTasks

    app: BaseQueueTasks = stages[0][0][0].task.app
    if any(call.task.app is not app for calls, _ in stages for call in calls):
        raise ValueError("Every task of a chain or group must belong to the same app.")
    specs = []
    flow_id = uuid7()
    first = EnqueueOptions(priority=priority, queue=queue, run_after=run_after)
    later = dataclasses.replace(first, run_after=None)  # they wait for the stage before
    for number, (calls, is_group) in enumerate(stages):
        for index, call in enumerate(calls):
            options = first if number == 0 else later
            spec = app.build_spec(call.task.name, call.args, call.kwargs, options)
            specs.append(
                dataclasses.replace(
                    spec,
                    flow_id=flow_id,
                    flow_stage=number,
                    flow_index=index if is_group else None,
                    blocked=number > 0,
                )
            )

    def store() -> FlowResult:
        tasks = iter(app.broker.storage.add_flow(specs))
        stored = tuple(tuple(next(tasks) for _ in calls) for calls, _ in stages)
        if signals.task_enqueued.has_listeners(type(app)):
            for stage in stored:
                for task in stage:
                    signals.task_enqueued.send(sender=type(app), task=task)
        if app.settings.mode == "immediate":
            from django_qtasks.worker.inline import run_flow_immediately

            stored = run_flow_immediately(app, stored)
        return result_class(app=app, flow_id=flow_id, stages=stored)

    if isinstance(app, AsyncQueueTasks):
        return sync_to_async(store)()
    return store()


__all__ = [
    "Chain",
    "ChainResult",
    "FlowFailed",
    "FlowResult",
    "Group",
    "GroupResult",
    "chain",
    "group",
]
