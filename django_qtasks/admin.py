"""The Django admin for tasks and GlobalConfig: watch the queue and steer it.

The admin stays thin: it reads through bounded queries (``dashboard.py``) and changes
nothing itself. Retry, cancel, pause and resume call the library (``app.retry``,
``app.cancel``, ``app.pause_queue``, ``app.resume_queue``), so a click in the admin
does exactly what the same call does in code. Every change needs the model's change
permission (delete: its delete permission) and arrives as a POST with Django's CSRF
token.

Why one module of more than 500 lines: most of it is ``TaskRecordAdmin``, one
``ModelAdmin`` whose list, change page, actions and extra views (retry, cancel, the
dashboard, routed by ``get_urls``) Django looks up on the class itself; spread over
modules, the class would still be one, only harder to read. The filters before it and
the GlobalConfig admin after it are short; the queries all live in ``storage/reads.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid as uuid_lib
from typing import TYPE_CHECKING, Any, Literal

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
)
from django.shortcuts import redirect
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_POST

from django_qtasks.contrib import dashboard
from django_qtasks.exceptions import QTasksError
from django_qtasks.global_config.counters import METRICS
from django_qtasks.global_config.shapes import queue_flag_fault
from django_qtasks.models import ACTIVE_STATUSES, ConfigEntry, TaskRecord, TaskStatus
from django_qtasks.settings import get_settings
from django_qtasks.storage.interface import QUEUES, WORKERS
from django_qtasks.templatetags.qtasks_admin import EMPTY
from django_qtasks.templatetags.qtasks_admin import qtasks_duration as format_duration
from django_qtasks.templatetags.qtasks_admin import qtasks_short_time as _short_time
from django_qtasks.templatetags.qtasks_admin import qtasks_time as _full_time
from django_qtasks.values import error_entries, progress_fraction

if TYPE_CHECKING:
    TaskRecordAdminBase = admin.ModelAdmin[TaskRecord]
    ConfigEntryAdminBase = admin.ModelAdmin[ConfigEntry]
    ConfigEntryFormBase = forms.ModelForm[ConfigEntry]
else:
    TaskRecordAdminBase = ConfigEntryAdminBase = admin.ModelAdmin
    ConfigEntryFormBase = forms.ModelForm

RETRYABLE = (TaskStatus.ERROR, TaskStatus.CANCEL)
ACTION_CAP = 1000
"""Tasks one retry/cancel action steers at most; "select all" on a million rows would
otherwise hold the request for minutes. Run it again for the next batch."""

Steer = Literal["retry", "cancel"]
INTERNAL_CONFIG = frozenset({WORKERS, METRICS})
"""GlobalConfig names the queue itself writes (heartbeats, metrics counters): read-only
in the admin, never added by hand; an edit would be overwritten within seconds."""


def _app() -> Any:
    from django_qtasks import app

    return app


# -- small renderers shared by the list and the detail page ---------------------------------
def _duration(task: TaskRecord) -> dt.timedelta | None:
    if task.started_at is None:
        return None
    end = task.finished_at or (timezone.now() if task.status == TaskStatus.PROCESS else None)
    return None if end is None else max(end - task.started_at, dt.timedelta(0))


def _name_parts(name: str) -> list[str]:
    """``shop.tasks.send_welcome`` as ``shop.`` ``tasks.`` ``send_welcome``: where a long
    name may wrap in a narrow column."""
    parts = name.split(".")
    return [part + "." for part in parts[:-1]] + parts[-1:]


def _url_name(model_admin: admin.ModelAdmin[Any], view: str) -> str:
    """The admin's URL name for one of a model's views: ``django_qtasks_taskrecord_retry``."""
    return f"{model_admin.opts.app_label}_{model_admin.opts.model_name}_{view}"


def _pretty_json(value: Any) -> SafeString:
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    return format_html('<pre class="qtasks-pre">{}</pre>', text)


def _refuse_nul(request: HttpRequest) -> HttpResponse | None:
    """400 for a filter or search holding NUL (``?queue=%00``): no row can match it, and
    PostgreSQL refuses it in a query with an error that would be a 500."""
    if any("\x00" in value for _key, values in request.GET.lists() for value in values):
        return HttpResponseBadRequest(_("A filter or search must not contain NUL characters."))
    return None


class DistinctValueFilter(admin.SimpleListFilter):
    """A filter over a low-cardinality column (queue, task name) whose choices come from
    a loose index scan, not from ``SELECT DISTINCT`` over the whole table."""

    column: Literal["queue", "task_name"]

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, value) for value in dashboard.distinct_values(self.column)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{self.column: value}) if value else queryset


class QueueFilter(DistinctValueFilter):
    title = gettext_lazy("queue")
    parameter_name = "queue"
    column = "queue"


class TaskNameFilter(DistinctValueFilter):
    title = gettext_lazy("task name")
    parameter_name = "task_name"
    column = "task_name"


class TaskChangeList(ChangeList):
    """The list reads only the columns it shows: arguments, results and tracebacks can
    be large, and a page of 100 rows should not drag them along."""

    def get_queryset(
        self, request: HttpRequest, exclude_parameters: list[str | None] | None = None
    ) -> QuerySet[Any]:
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.defer("args", "kwargs", "returning", "traceback", "errors")


@admin.register(TaskRecord)
class TaskRecordAdmin(TaskRecordAdminBase):
    """Tasks: a list to watch, a detail page to read, actions to retry and cancel."""

    # Fits a 1280 px window with the admin's sidebar open: the task name wraps and
    # carries its queue and priority; the start time is on the task's page (and is
    # the finish time minus the duration).
    list_display = (
        "status_badge",
        "task",
        "attempts",
        "created",
        "finished",
        "duration",
    )
    list_display_links = ("task",)
    list_filter = (
        "status",
        QueueFilter,
        TaskNameFilter,
        ("created_at", admin.DateFieldListFilter),
    )
    search_fields = ("uuid", "task_name")  # shows the box; get_search_results does the work
    search_help_text = gettext_lazy("A task's full uuid, or part of a task name.")
    # Newest first, the pk breaking ties: exactly the qtasks_created_idx index, read
    # backwards. Other columns are not sortable: sorting a million rows by priority on
    # every page load is the slow query this admin exists to avoid.
    ordering = ("-created_at", "-uuid")
    sortable_by = ("created",)
    list_per_page = 50
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facets count every filter choice: full scans
    paginator = dashboard.EstimatedCountPaginator
    actions = ("retry_tasks", "cancel_tasks")
    change_list_template = "django_qtasks/admin/task_change_list.html"
    change_form_template = "django_qtasks/admin/task_change_form.html"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    ("status_badge", "attempts", "rescue_count", "queue", "priority"),
                    "task_name",
                    "uuid",
                    ("tags", "unique_key", "cancel_state"),
                    "concurrency_limit",
                )
            },
        ),
        (gettext_lazy("Progress"), {"fields": ("progress_bar",)}),
        (
            gettext_lazy("Timing"),
            {
                "fields": (
                    ("created_time", "run_after_time", "updated_time"),
                    ("started_time", "finished_time", "duration"),
                )
            },
        ),
        (gettext_lazy("Worker"), {"fields": ("worker",)}),
        (gettext_lazy("Flow"), {"fields": ("flow_links",)}),
        (gettext_lazy("Call"), {"fields": ("args_pretty", "kwargs_pretty")}),
        (gettext_lazy("Outcome"), {"fields": ("result_pretty", "traceback_pretty")}),
        (gettext_lazy("Attempts and errors"), {"fields": ("error_history",)}),
    )
    readonly_fields = (
        *(f.name for f in TaskRecord._meta.fields),
        "status_badge",
        "task",
        "attempts",
        "rescue_count",
        "duration",
        "cancel_state",
        "created_time",
        "run_after_time",
        "updated_time",
        "started_time",
        "finished_time",
        "progress_bar",
        "worker",
        "flow_links",
        "concurrency_limit",
        "args_pretty",
        "kwargs_pretty",
        "result_pretty",
        "traceback_pretty",
        "error_history",
    )

    # -- permissions -------------------------------------------------------------------------
    def has_add_permission(self, request: HttpRequest) -> bool:
        # Tasks are created by code (add_task), which validates what a form cannot.
        return False

    def _require_change(self, request: HttpRequest) -> None:
        if not self.has_change_permission(request):
            raise PermissionDenied

    def get_fieldsets(self, request: HttpRequest, obj: TaskRecord | None = None) -> Any:
        """The fieldsets, without the parts this task has nothing for (no progress
        reported, no result, no traceback, no failed attempt): a short page reads faster."""
        if obj is None:
            return self.fieldsets
        empty = {
            "progress_bar": not isinstance(obj.progress, dict),
            "flow_links": obj.flow_id is None,
            "concurrency_limit": obj.max_concurrency is None,
            "result_pretty": obj.status != TaskStatus.SUCCESS,
            "traceback_pretty": not obj.traceback,
            "error_history": not obj.errors,
        }
        fieldsets = []
        for name, options in self.fieldsets or ():
            fields = [f for f in options["fields"] if not (isinstance(f, str) and empty.get(f))]
            if fields:
                fieldsets.append((name, {**options, "fields": fields}))
        return fieldsets

    # -- list columns ------------------------------------------------------------------------
    @admin.display(description=gettext_lazy("status"))
    def status_badge(self, task: TaskRecord) -> SafeString:
        label = TaskStatus(task.status).label if task.status in TaskStatus.values else task.status
        fraction = progress_fraction(task.progress) if task.status == TaskStatus.PROCESS else None
        suffix = "" if fraction is None else f" {fraction:.0%}"
        requested = task.cancel_requested and task.status == TaskStatus.PROCESS
        return format_html(
            '<span class="qtasks-badge qtasks-status-{}"{}>{}{}</span>{}',
            task.status,
            format_html(' title="{}"', _("cancel requested")) if requested else "",
            label,
            suffix,
            format_html(' <span class="qtasks-note">{}</span>', _("stopping")) if requested else "",
        )

    @admin.display(description=gettext_lazy("task"), ordering=None)
    def task(self, task: TaskRecord) -> SafeString:
        """The name (it wraps at dots), with its queue and a priority other than 0 below."""
        details = [task.queue] if task.queue else []
        if task.priority:
            details.append(_("priority %(p)+d") % {"p": task.priority})
        return format_html(
            '<span class="qtasks-name">{}</span><span class="qtasks-sub">{}</span>',
            format_html_join("", "{}<wbr>", ((part,) for part in _name_parts(task.task_name))),
            " · ".join(details),
        )

    @admin.display(description=gettext_lazy("cancel requested"))
    def cancel_state(self, task: TaskRecord) -> str:
        """Words, not Django's red icon: "no" is the normal state, not an error."""
        if not task.cancel_requested:
            return _("no")
        if task.status == TaskStatus.PROCESS:
            return _("yes: its worker stops it at its next check")
        return _("yes")

    @admin.display(description=gettext_lazy("created"), ordering="created_at")
    def created(self, task: TaskRecord) -> SafeString | str:
        return _short_time(task.created_at)

    @admin.display(description=gettext_lazy("finished"))
    def finished(self, task: TaskRecord) -> SafeString | str:
        return _short_time(task.finished_at)

    @admin.display(description=gettext_lazy("attempt"))
    def attempts(self, task: TaskRecord) -> SafeString | str:
        """Attempts made / attempts allowed (one run plus ``max_retries`` retries), and
        below them how often a run was lost to its worker (rescues spend no attempt)."""
        made = f"{task.attempt}/{task.max_retries + 1}"
        if not task.rescues:
            return made
        return format_html(
            '{}<span class="qtasks-sub">{}</span>',
            made,
            ngettext("rescued %(n)d time", "rescued %(n)d times", task.rescues)
            % {"n": task.rescues},
        )

    @admin.display(description=gettext_lazy("rescues"))
    def rescue_count(self, task: TaskRecord) -> str:
        """Runs lost to the worker / QTASKS["MAX_RESCUES"]: one more ends the task."""
        return _("%(n)d of %(allowed)d allowed") % {
            "n": task.rescues,
            "allowed": get_settings().max_rescues,
        }

    @admin.display(description=gettext_lazy("duration"))
    def duration(self, task: TaskRecord) -> str:
        return format_duration(_duration(task))

    # -- detail fields -----------------------------------------------------------------------
    @admin.display(description=gettext_lazy("created at"))
    def created_time(self, task: TaskRecord) -> SafeString | str:
        return _full_time(task.created_at)

    @admin.display(description=gettext_lazy("run after"))
    def run_after_time(self, task: TaskRecord) -> SafeString | str:
        return _full_time(task.run_after)

    @admin.display(description=gettext_lazy("updated at"))
    def updated_time(self, task: TaskRecord) -> SafeString | str:
        return _full_time(task.updated_at)

    @admin.display(description=gettext_lazy("started at"))
    def started_time(self, task: TaskRecord) -> SafeString | str:
        return _full_time(task.started_at)

    @admin.display(description=gettext_lazy("finished at"))
    def finished_time(self, task: TaskRecord) -> SafeString | str:
        return _full_time(task.finished_at)

    @admin.display(description=gettext_lazy("progress"))
    def progress_bar(self, task: TaskRecord) -> SafeString | str:
        progress = task.progress
        if not isinstance(progress, dict):
            return EMPTY
        fraction = progress_fraction(progress)
        done, total = progress.get("done"), progress.get("total")
        amount = f"{done} / {total}" if total is not None else f"{done}"
        bar = (
            format_html(
                '<progress class="qtasks-progress" max="1" value="{}">{}</progress> {} ',
                f"{fraction:.4f}",
                f"{fraction:.0%}",
                f"{fraction:.0%}",
            )
            if fraction is not None
            else ""
        )
        return format_html(
            '{}<span class="qtasks-progress-text">{}</span> {}',
            bar,
            amount,
            progress.get("message") or "",
        )

    @admin.display(description=gettext_lazy("worker"))
    def worker(self, task: TaskRecord) -> SafeString | str:
        if not task.worker_id:
            return EMPTY
        rows = dashboard.workers(worker_id=task.worker_id)
        if not rows:
            return format_html("<code>{}</code> ({})", task.worker_id, _("no heartbeat on record"))
        row = rows[0]
        state = _("alive") if row.alive else _("heartbeat expired")
        return format_html(
            "<code>{}</code> on {} (pid {}), {}, last heartbeat {} ago",
            task.worker_id,
            row.host,
            row.pid,
            state,
            format_duration(row.age),
        )

    @admin.display(description=gettext_lazy("concurrency limit"))
    def concurrency_limit(self, task: TaskRecord) -> str:
        """``max_concurrency`` and its group (docs/concurrency-limits.md)."""
        if task.max_concurrency is None:
            return EMPTY
        if task.concurrency_key:
            return _("at most %(n)d at a time with key %(key)s") % {
                "n": task.max_concurrency,
                "key": task.concurrency_key,
            }
        return _("at most %(n)d of this task at a time") % {"n": task.max_concurrency}

    @admin.display(description=gettext_lazy("links"))
    def flow_links(self, task: TaskRecord) -> SafeString | str:
        """The chain or group this task belongs to: its previous step, the other members
        of its group, its next step (links to their pages), and the whole flow's list."""
        if task.flow_id is None or task.flow_stage is None:
            return EMPTY
        stages = dashboard.flow_neighbours(task)
        change = f"admin:{_url_name(self, 'change')}"

        def links(rows: list[TaskRecord]) -> SafeString:
            return format_html_join(
                ", ",
                '<a href="{}">{}</a> <span class="qtasks-badge qtasks-status-{}">{}</span>',
                (
                    (reverse(change, args=[row.pk]), row.task_name, row.status, row.status)
                    for row in rows
                ),
            )

        members = [row for row in stages.get(task.flow_stage, []) if row.pk != task.pk]
        lines = [
            (
                _("flow"),
                format_html(
                    '<a href="{}?flow_id={}">{}</a>',
                    reverse(f"admin:{_url_name(self, 'changelist')}"),
                    task.flow_id,
                    _("every task of this flow"),
                ),
            ),
            (_("previous step"), links(stages.get(task.flow_stage - 1, []))),
            (_("group members"), links(members) if task.flow_index is not None else ""),
            (_("next step"), links(stages.get(task.flow_stage + 1, []))),
        ]
        return format_html(
            '<table class="qtasks-flow"><tbody>{}</tbody></table>',
            format_html_join(
                "", "<tr><th>{}</th><td>{}</td></tr>", ((k, v) for k, v in lines if v)
            ),
        )

    @admin.display(description=gettext_lazy("args"))
    def args_pretty(self, task: TaskRecord) -> SafeString:
        return _pretty_json(task.args)

    @admin.display(description=gettext_lazy("kwargs"))
    def kwargs_pretty(self, task: TaskRecord) -> SafeString:
        return _pretty_json(task.kwargs)

    @admin.display(description=gettext_lazy("result"))
    def result_pretty(self, task: TaskRecord) -> SafeString | str:
        if task.status != TaskStatus.SUCCESS:
            return EMPTY
        return _pretty_json(task.returning)

    @admin.display(description=gettext_lazy("traceback"))
    def traceback_pretty(self, task: TaskRecord) -> SafeString | str:
        if not task.traceback:
            return EMPTY
        return format_html('<pre class="qtasks-pre qtasks-traceback">{}</pre>', task.traceback)

    @admin.display(description=gettext_lazy("history"))
    def error_history(self, task: TaskRecord) -> SafeString | str:
        """One row per failed attempt (``errors``), oldest first, traceback folded."""
        entries = error_entries(task.errors)
        if not entries:
            return _("No failed attempts.")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            (
                (
                    e.get("attempt", ""),
                    e.get("at", ""),
                    e.get("type", ""),
                    e.get("message", ""),
                    format_html(
                        '<details><summary>{}</summary><pre class="qtasks-pre">{}</pre></details>',
                        _("traceback"),
                        e["traceback"],
                    )
                    if e.get("traceback")
                    else "",
                )
                for e in entries
            ),
        )
        return format_html(
            '<table class="qtasks-errors"><thead><tr><th>{}</th><th>{}</th><th>{}</th>'
            "<th>{}</th><th></th></tr></thead><tbody>{}</tbody></table>",
            _("attempt"),
            _("at"),
            _("error"),
            _("message"),
            rows,
        )

    # -- steering: one helper for the list actions and the detail page's buttons -------------
    def steer(self, request: HttpRequest, queryset: QuerySet[TaskRecord], verb: Steer) -> None:
        """Retry or cancel the tasks in ``queryset`` through the library, at most
        :data:`ACTION_CAP` of them, and tell the user what happened to which."""
        self._require_change(request)
        eligible = RETRYABLE if verb == "retry" else ACTIVE_STATUSES
        uuids = list(
            queryset.filter(status__in=eligible)
            .order_by()
            .values_list("uuid", flat=True)[: ACTION_CAP + 1]
        )
        more = len(uuids) > ACTION_CAP
        uuids = uuids[:ACTION_CAP]
        app = _app()
        reason = _("cancelled by %(user)s in the admin") % {"user": request.user.get_username()}
        done = requested = 0
        for uuid in uuids:
            if verb == "retry":
                task = app.retry(uuid)
                done += task is not None and task.status == TaskStatus.NEW
            else:
                task = app.cancel(uuid, reason)
                if task is not None and task.status == TaskStatus.CANCEL:
                    done += 1
                elif task is not None and task.status == TaskStatus.PROCESS:
                    requested += 1
        self._report(request, verb, done, requested, more)

    def _report(
        self, request: HttpRequest, verb: Steer, done: int, requested: int, more: bool
    ) -> None:
        if verb == "retry":
            text = ngettext(
                "%(n)d task sent back to the queue.", "%(n)d tasks sent back to the queue.", done
            ) % {"n": done}
        else:
            said = []
            if done:
                said.append(
                    ngettext("%(n)d task cancelled.", "%(n)d tasks cancelled.", done) % {"n": done}
                )
            if requested:
                said.append(
                    ngettext(
                        "%(n)d running task asked to stop: its worker stops it at its next "
                        "check (a task in a child process is ended), and it ends as cancelled.",
                        "%(n)d running tasks asked to stop: their workers stop them at their "
                        "next check (tasks in child processes are ended), and they end as "
                        "cancelled.",
                        requested,
                    )
                    % {"n": requested}
                )
            text = " ".join(said)
        if more:
            text += " " + _("Only the first %(cap)d were handled; run it again for the rest.") % {
                "cap": ACTION_CAP
            }
        level = messages.SUCCESS if done or requested else messages.WARNING
        if not (done or requested):
            text = (
                _("Nothing to retry: only failed or cancelled tasks can be retried.")
                if verb == "retry"
                else _("Nothing to cancel: only waiting or running tasks can be cancelled.")
            )
        self.message_user(request, text, level)

    @admin.action(
        description=gettext_lazy("Retry selected failed or cancelled tasks"), permissions=["change"]
    )
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[TaskRecord]) -> None:
        self.steer(request, queryset, "retry")

    @admin.action(
        description=gettext_lazy("Cancel selected waiting or running tasks"), permissions=["change"]
    )
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[TaskRecord]) -> None:
        self.steer(request, queryset, "cancel")

    # -- views -------------------------------------------------------------------------------
    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return TaskChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[TaskRecord], bool]:
        """A full uuid finds that task (primary key); other text matches task names.

        Names are matched against the distinct task names (a loose index scan) and the
        list filtered with ``task_name IN (...)`` over the ``task_name`` index, instead of
        ``LIKE '%...%'`` over every row. Past :data:`dashboard.DISTINCT_CAP` names, it
        falls back to the plain ``icontains`` search.
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(uuid=uuid_lib.UUID(term)), False
        except ValueError:
            pass
        names = dashboard.distinct_values("task_name", dashboard.DISTINCT_CAP + 1)
        if len(names) > dashboard.DISTINCT_CAP:
            return queryset.filter(task_name__icontains=term), False
        wanted = term.casefold()
        return queryset.filter(task_name__in=[n for n in names if wanted in n.casefold()]), False

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "POST":
            self._refuse_forbidden_actions(request)
        return _refuse_nul(request) or super().changelist_view(request, extra_context)

    def _refuse_forbidden_actions(self, request: HttpRequest) -> None:
        """403 for an action the user may not run. Django would answer "no action
        selected" and redirect; a refusal should say it is one."""
        known = {name for name, _func in self.admin_site.actions} | set(self.actions or ())
        allowed = set(self.get_actions(request))
        for name in request.POST.getlist("action"):
            if name in known and name not in allowed:
                raise PermissionDenied

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # Every field is read-only: a "save" would only write back a stale copy of a
        # row that a worker may be updating. Changes go through the buttons.
        if request.method == "POST":
            raise PermissionDenied
        return super().change_view(request, object_id, form_url, extra_context)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: TaskRecord | None = None,
    ) -> HttpResponse:
        can_change = obj is not None and self.has_change_permission(request, obj)
        context.update(
            title=_("Task") if obj is not None else context.get("title", ""),
            show_save=False,
            show_save_and_continue=False,
            show_save_and_add_another=False,
            can_retry=can_change and obj is not None and obj.status in RETRYABLE,
            can_cancel=can_change
            and obj is not None
            and obj.status in ACTIVE_STATUSES
            and not (obj.status == TaskStatus.PROCESS and obj.cancel_requested),
            cancel_pending=obj is not None
            and obj.status == TaskStatus.PROCESS
            and obj.cancel_requested,
            is_running=obj is not None and obj.status == TaskStatus.PROCESS,
            is_active=obj is not None and obj.status in ACTIVE_STATUSES,
        )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("dashboard/", wrap(self.dashboard_view), name=_url_name(self, "dashboard")),
            path(
                "<path:object_id>/retry/",
                wrap(require_POST(self.retry_view)),
                name=_url_name(self, "retry"),
            ),
            path(
                "<path:object_id>/cancel/",
                wrap(require_POST(self.cancel_view)),
                name=_url_name(self, "cancel"),
            ),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        return dashboard.dashboard_view(request, self)

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._steer_one(request, object_id, "retry")

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._steer_one(request, object_id, "cancel")

    def _steer_one(self, request: HttpRequest, object_id: str, verb: Steer) -> HttpResponse:
        self._require_change(request)
        task = self.get_object(request, object_id)
        if task is None:
            raise Http404
        self.steer(request, self.get_queryset(request).filter(pk=task.pk), verb)
        return redirect(reverse(f"admin:{_url_name(self, 'change')}", args=[task.pk]))


PREVIEW = 60  # characters of a GlobalConfig value shown before it folds


class ConfigEntryForm(ConfigEntryFormBase):
    """The add and change form. Names the queue writes itself cannot be added by hand."""

    class Meta:
        model = ConfigEntry
        fields = ("name", "key", "value", "expires_at")

    def clean_name(self) -> str:
        name = str(self.cleaned_data["name"])
        if name in INTERNAL_CONFIG:
            raise forms.ValidationError(
                _("%(name)s entries are written by the queue itself and cannot be added here.")
                % {"name": name}
            )
        return name

    def clean(self) -> dict[str, Any]:
        """The shape of the entries the queue reads (queue flags): a bad one is refused
        here rather than ignored, with a warning, by every worker."""
        cleaned = super().clean() or {}
        if cleaned.get("name") == QUEUES and "key" in cleaned and "value" in cleaned:
            fault = queue_flag_fault(str(cleaned["key"]), cleaned["value"])
            if fault is not None:
                raise forms.ValidationError(_("Not a queue flag: %(fault)s.") % {"fault": fault})
        return cleaned


@admin.register(ConfigEntry)
class ConfigEntryAdmin(ConfigEntryAdminBase):
    """GlobalConfig: readable Workers and Queues sections above the raw entries.

    Pausing a queue is a change to GlobalConfig, so it needs this model's change
    permission; workers read the flag on every heartbeat and stop claiming from the
    queue within ``QTASKS['HEARTBEAT_INTERVAL']`` (5 s by default).
    """

    list_display = ("name", "key", "value_folded", "expires", "updated")
    list_filter = ("name",)
    change_list_template = "django_qtasks/admin/config_change_list.html"
    form = ConfigEntryForm

    # -- what the queue writes is read-only here -------------------------------------------
    def has_change_permission(self, request: HttpRequest, obj: ConfigEntry | None = None) -> bool:
        """No editing of heartbeats and counters: the queue rewrites them within seconds,
        and a hand-made value would only confuse the dashboard and the metrics."""
        if obj is not None and obj.name in INTERNAL_CONFIG:
            return False
        return super().has_change_permission(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: ConfigEntry | None = None) -> Any:
        if obj is not None and obj.name in INTERNAL_CONFIG:
            return ("name", "key", "value_pretty", "expires_at", "updated_at")
        return super().get_readonly_fields(request, obj)

    def get_fields(self, request: HttpRequest, obj: ConfigEntry | None = None) -> Any:
        if obj is not None and obj.name in INTERNAL_CONFIG:
            return ("name", "key", "value_pretty", "expires_at", "updated_at")
        return super().get_fields(request, obj)

    @admin.display(description=gettext_lazy("value"))
    def value_folded(self, entry: ConfigEntry) -> SafeString:
        """The JSON folded under a one-line preview: a worker's metrics are a page long."""
        text = json.dumps(entry.value, ensure_ascii=False, sort_keys=True, default=str)
        if len(text) <= PREVIEW:
            return format_html("<code>{}</code>", text)
        return format_html(
            '<details class="qtasks-json"><summary><code>{}…</code></summary>{}</details>',
            text[:PREVIEW],
            _pretty_json(entry.value),
        )

    @admin.display(description=gettext_lazy("value"))
    def value_pretty(self, entry: ConfigEntry) -> SafeString:
        return format_html(
            '<details class="qtasks-json"><summary>{}</summary>{}</details>',
            _("show the JSON"),
            _pretty_json(entry.value),
        )

    @admin.display(description=gettext_lazy("expires at"), ordering="expires_at")
    def expires(self, entry: ConfigEntry) -> SafeString | str:
        return _full_time(entry.expires_at)

    @admin.display(description=gettext_lazy("updated at"), ordering="updated_at")
    def updated(self, entry: ConfigEntry) -> SafeString | str:
        return _full_time(entry.updated_at)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        refused = _refuse_nul(request)
        if refused is not None:
            return refused
        if self.has_view_permission(request):
            now = timezone.now()
            queues, capped = dashboard.queue_stats(now)
            extra_context = {
                **(extra_context or {}),
                "workers": dashboard.workers(now),
                "queues": queues,
                "queues_capped": capped,
                "scan_cap": dashboard.SCAN_CAP,
                "can_pause": self.has_change_permission(request),
            }
        return super().changelist_view(request, extra_context)

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "queues/<str:queue>/<str:verb>/",
                wrap(require_POST(self.queue_view)),
                name=_url_name(self, "queue"),
            ),
            *super().get_urls(),
        ]

    def queue_view(self, request: HttpRequest, queue: str, verb: str) -> HttpResponse:
        """Pause or resume ``queue`` through the library, then go back where we came from."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        if verb not in {"pause", "resume"}:
            raise Http404
        app = _app()
        try:
            if verb == "pause":
                app.pause_queue(queue)
                message = _("Queue %(q)s paused: workers stop claiming from it within seconds.")
                self.message_user(request, message % {"q": queue})
            else:
                app.resume_queue(queue)
                self.message_user(request, _("Queue %(q)s resumed.") % {"q": queue})
        except QTasksError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        return HttpResponseRedirect(self._next_url(request))

    def _next_url(self, request: HttpRequest) -> str:
        target = request.POST.get("next", "")
        if target and url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            return target
        return reverse(f"admin:{_url_name(self, 'changelist')}")
