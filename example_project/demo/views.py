"""The demo page: buttons that enqueue tasks from views, and a live table of recent ones.

Views only enqueue (``add_task()`` writes a row and returns at once); the worker
process runs the tasks. The table is refreshed from ``/tasks.json`` by the page.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from typing import Any
from uuid import UUID

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST, require_safe

from django_qtasks import Task, app
from django_qtasks.models import ACTIVE_STATUSES, TaskRecord, TaskStatus
from django_qtasks.values import progress_fraction

from . import tasks

RECENT = 20
TEXT_LIMIT = 200


@require_safe
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "demo/index.html", {"feed": feed(), "refresh_ms": 1000})


@require_safe
def tasks_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(feed())


@require_POST
def start(request: HttpRequest, kind: str) -> HttpResponse:
    starter = STARTERS.get(kind)
    if starter is None:
        raise Http404(f"No demo task called {kind!r}.")
    try:
        task = starter(request)
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Queued {_short(task.task_name)} as task {task.uuid}.")
    return redirect("demo:index")


@require_POST
def cancel(request: HttpRequest, uuid: UUID) -> HttpResponse:
    task = app.cancel(uuid, "cancelled from the demo page")
    if task is None:
        messages.error(request, f"No task {uuid}.")
    elif task.status == TaskStatus.CANCEL:
        messages.success(request, f"Cancelled {_short(task.task_name)}: it will not run.")
    elif task.status == TaskStatus.PROCESS:
        messages.success(request, f"Asked the running {_short(task.task_name)} to stop; it "
                                  "ends at its next progress update.")
    else:
        messages.error(request, f"{_short(task.task_name)} had already ended ({task.status}).")
    return redirect("demo:index")


# -- what each button does: the ways a view enqueues a task --------------------------------


def _int_field(request: HttpRequest, name: str) -> int:
    value = request.POST.get(name, "").strip()
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {value!r}.") from None


def _start_add(request: HttpRequest) -> Task:
    a, b = _int_field(request, "a"), _int_field(request, "b")
    delay = _int_field(request, "delay") if request.POST.get("delay") else 0
    return tasks.add_numbers.add_task(a, b, run_after=delay or None)


def _start_slow(request: HttpRequest) -> Task:
    # The pending-call form: calling the task builds the call, add_task() stores it.
    return tasks.count_slowly(steps=10).add_task()


def _start_flaky(request: HttpRequest) -> Task:
    return tasks.call_flaky_service.add_task(priority=10)


def _start_async(request: HttpRequest) -> Task:
    return tasks.wait_together.add_task([0.5, 1.5, 1.0])


def _start_failing(request: HttpRequest) -> Task:
    return tasks.parse_json.add_task("{'single': 'quotes are not JSON'}")


STARTERS: dict[str, Callable[[HttpRequest], Task]] = {
    "add": _start_add,
    "slow": _start_slow,
    "flaky": _start_flaky,
    "async": _start_async,
    "failing": _start_failing,
}


# -- the table's rows ---------------------------------------------------------------------


def feed() -> dict[str, Any]:
    """What the page shows, for its first render and for every refresh."""
    return {"tasks": recent_tasks(), "workers": len(app.broker.live_workers())}


def recent_tasks() -> list[dict[str, Any]]:
    """The newest tasks as plain JSON, shared by the first render and the refreshes."""
    now = timezone.now()
    records = TaskRecord.objects.order_by("-created_at")[:RECENT]
    return [_row(record, now) for record in records]


def _row(record: TaskRecord, now: dt.datetime) -> dict[str, Any]:
    waiting = record.status in (TaskStatus.NEW, TaskStatus.RETRY) and record.run_after > now
    return {
        "uuid": str(record.uuid),
        "name": record.task_name,
        "short_name": _short(record.task_name),
        "call": _call_text(record),
        "status": record.status,
        "attempt": record.attempt,
        "max_attempts": record.max_retries + 1,
        "progress": _progress(record.progress),
        "result": _clip(_json(record.returning)) if record.status == "success" else None,
        "error": _last_error(record.errors),
        "waiting_seconds": (record.run_after - now).total_seconds() if waiting else None,
        "seconds": _run_seconds(record, now),
        "created_at": record.created_at.isoformat(),
        "cancellable": record.status in ACTIVE_STATUSES and not record.cancel_requested,
        "cancel_url": reverse("demo:cancel", args=[record.uuid]),
        "admin_url": reverse("admin:django_qtasks_taskrecord_change", args=[record.uuid]),
    }


def _run_seconds(record: TaskRecord, now: dt.datetime) -> float | None:
    """How long the current (or final) attempt ran; None while it waits."""
    if record.started_at is None:
        return None
    if record.status == TaskStatus.PROCESS:
        return (now - record.started_at).total_seconds()
    if record.finished_at is not None:
        return (record.finished_at - record.started_at).total_seconds()
    return None


def _short(task_name: str) -> str:
    return task_name.rsplit(".", 1)[-1]


def _clip(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"


# The row's JSON columns are shown as they are stored: a row written by another program
# (or by hand) may hold any JSON there, of any shape or depth, and the page still shows.


def _json(value: Any) -> str:
    try:
        return json.dumps(value)
    except (RecursionError, ValueError):
        return "(too deeply nested to show)"


def _call_text(record: TaskRecord) -> str:
    args, kwargs = record.args, record.kwargs
    if isinstance(args, list) and isinstance(kwargs, dict):
        parts = [_json(arg) for arg in args]
        parts += [f"{name}={_json(value)}" for name, value in kwargs.items()]
        call = ", ".join(parts)
    else:  # not the shapes add_task() stores
        call = f"args={_json(args)}, kwargs={_json(kwargs)}"
    return _clip(f"{_short(record.task_name)}({call})")


def _number(value: Any) -> int | float | None:
    """A finite number as it is (the feed must stay JSON a browser parses); None for
    anything else (text, inf, an integer too big for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:
        return None


def _progress(progress: Any) -> dict[str, Any] | None:
    if not progress or not isinstance(progress, dict):
        return None
    fraction = progress_fraction(progress)
    return {
        "done": _number(progress.get("done")) or 0,
        "total": _number(progress.get("total")),
        "percent": None if fraction is None else round(100 * fraction),
        "message": _clip(str(progress.get("message", ""))),
    }


def _last_error(errors: Any) -> str | None:
    if not errors or not isinstance(errors, list):
        return None
    last = errors[-1] if isinstance(errors[-1], dict) else {"message": errors[-1]}
    kind = str(last.get("type", "Error")).removeprefix("builtins.")
    return _clip(f"{kind}: {_clip(str(last.get('message', '')))}")
