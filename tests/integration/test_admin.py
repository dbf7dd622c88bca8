"""The admin and dashboard through Django's test client: permissions, actions, and the
cost of a page (bounded queries, no full-table count)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_qtasks import app
from django_qtasks.contrib import dashboard
from django_qtasks.models import ConfigEntry, TaskRecord

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:django_qtasks_taskrecord_changelist")
DASHBOARD = reverse("admin:django_qtasks_taskrecord_dashboard")
CONFIG = reverse("admin:django_qtasks_configentry_changelist")


def change_url(task: TaskRecord) -> str:
    return reverse("admin:django_qtasks_taskrecord_change", args=[task.pk])


def steer_url(task: TaskRecord, verb: str) -> str:
    return reverse(f"admin:django_qtasks_taskrecord_{verb}", args=[task.pk])


def queue_url(queue: str, verb: str) -> str:
    return reverse("admin:django_qtasks_configentry_queue", kwargs={"queue": queue, "verb": verb})


@pytest.fixture
def make_task() -> Callable[..., TaskRecord]:
    """A task row in any state, written directly: these tests are about the admin."""

    def make(**fields: Any) -> TaskRecord:
        now = timezone.now()
        values: dict[str, Any] = {
            "task_name": "tests.record",
            "queue": "default",
            "args": ["key"],
            "run_after": now,
            "created_at": now,
            "updated_at": now,
        }
        values.update(fields)
        return TaskRecord.objects.create(**values)

    return make


@pytest.fixture
def staff(django_user_model: Any) -> Callable[..., Client]:
    """A logged-in staff client holding exactly the given permissions."""

    def login(*codenames: str) -> Client:
        user = django_user_model.objects.create_user(
            f"staff{django_user_model.objects.count()}", password="pw", is_staff=True
        )
        for codename in codenames:
            user.user_permissions.add(
                Permission.objects.get(codename=codename, content_type__app_label="django_qtasks")
            )
        client = Client()
        client.force_login(user)
        return client

    return login


def action(client: Client, name: str, *tasks: TaskRecord) -> Any:
    return client.post(
        CHANGELIST, {"action": name, "_selected_action": [str(t.pk) for t in tasks], "index": 0}
    )


# -- who may see and touch what ------------------------------------------------------------
def test_anonymous_users_are_sent_to_the_login_page(client, make_task):
    task = make_task()
    for url in (CHANGELIST, change_url(task), DASHBOARD, CONFIG):
        response = client.get(url)
        assert (response.status_code, "/login/" in response["Location"]) == (302, True), url
    for url in (steer_url(task, "retry"), steer_url(task, "cancel"), queue_url("default", "pause")):
        response = client.post(url)
        assert (response.status_code, "/login/" in response["Location"]) == (302, True), url
    assert TaskRecord.objects.get(pk=task.pk).status == "new"
    assert app.paused_queues() == set()


def test_staff_without_permissions_get_403_for_every_page_and_action(staff, make_task):
    client = staff()
    failed = make_task(status="error")
    waiting = make_task()
    for url in (CHANGELIST, change_url(failed), DASHBOARD, CONFIG):
        assert client.get(url).status_code == 403, url
    assert client.get(DASHBOARD + "?fragment=1").status_code == 403
    assert client.post(steer_url(failed, "retry")).status_code == 403
    assert client.post(steer_url(waiting, "cancel")).status_code == 403
    assert client.post(queue_url("default", "pause")).status_code == 403
    for name in ("retry_tasks", "cancel_tasks", "delete_selected"):
        assert action(client, name, failed, waiting).status_code == 403, name
    assert set(TaskRecord.objects.values_list("status", flat=True)) == {"error", "new"}
    assert app.paused_queues() == set()


def test_view_only_staff_see_everything_and_change_nothing(staff, make_task):
    client = staff("view_taskrecord", "view_configentry")
    failed = make_task(status="error", traceback="Traceback: boom")
    waiting = make_task()
    page = client.get(CHANGELIST)
    assert page.status_code == 200
    assert b"retry_tasks" not in page.content
    assert b"cancel_tasks" not in page.content
    detail = client.get(change_url(failed))
    assert detail.status_code == 200
    assert b"Traceback: boom" in detail.content
    assert steer_url(failed, "retry").encode() not in detail.content
    assert client.get(DASHBOARD).status_code == 200
    config = client.get(CONFIG)
    assert config.status_code == 200
    assert queue_url("default", "pause").encode() not in config.content
    assert client.post(steer_url(failed, "retry")).status_code == 403
    assert client.post(steer_url(waiting, "cancel")).status_code == 403
    assert client.post(change_url(failed), {}).status_code == 403
    assert client.post(queue_url("default", "pause")).status_code == 403
    for name in ("retry_tasks", "cancel_tasks", "delete_selected"):
        assert action(client, name, failed, waiting).status_code == 403, name
    assert set(TaskRecord.objects.values_list("status", flat=True)) == {"error", "new"}


def test_change_permission_does_not_grant_delete(staff, make_task):
    client = staff("view_taskrecord", "change_taskrecord")
    task = make_task(status="error")
    assert action(client, "delete_selected", task).status_code == 403
    assert action(client, "retry_tasks", task).status_code == 302
    deleter = staff("view_taskrecord", "delete_taskrecord")
    response = deleter.post(
        CHANGELIST,
        {"action": "delete_selected", "_selected_action": [str(task.pk)], "post": "yes"},
    )
    assert response.status_code == 302
    assert not TaskRecord.objects.filter(pk=task.pk).exists()


def test_csrf_is_enforced_on_the_buttons(admin_user, make_task):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    task = make_task(status="error")
    assert client.post(steer_url(task, "retry")).status_code == 403
    assert TaskRecord.objects.get(pk=task.pk).status == "error"
    token = client.get(change_url(task)).context["csrf_token"]
    assert client.post(steer_url(task, "retry"), {"csrfmiddlewaretoken": token}).status_code == 302
    assert TaskRecord.objects.get(pk=task.pk).status == "new"


def test_buttons_only_answer_post(admin_client, make_task):
    task = make_task(status="error")
    assert admin_client.get(steer_url(task, "retry")).status_code == 405
    assert TaskRecord.objects.get(pk=task.pk).status == "error"


# -- what the pages show ----------------------------------------------------------------------
def test_the_list_shows_badges_attempts_and_durations(admin_client, make_task):
    now = timezone.now()
    make_task(
        status="success",
        attempt=1,
        max_retries=2,
        started_at=now - dt.timedelta(seconds=3),
        finished_at=now,
    )
    page = admin_client.get(CHANGELIST)
    html = page.content.decode()
    assert 'class="qtasks-badge qtasks-status-success"' in html
    assert "1/3" in html
    assert "3.000 s" in html
    assert "1 task" in html
    assert reverse("admin:django_qtasks_taskrecord_dashboard") in html


def test_the_list_and_the_detail_show_how_often_a_task_was_rescued(admin_client, make_task):
    calm = make_task(status="new")
    lost = make_task(status="process", attempt=1, worker_id="gone", started_at=timezone.now())
    assert app.broker.storage.rescue() == [(lost.uuid, "retry")]  # its worker has no heartbeat
    html = admin_client.get(CHANGELIST).content.decode()
    assert html.count("rescued 1 time<") == 1  # the rescued row only
    assert "0/1" in html  # its attempt, unspent
    assert "1 of 3 allowed" in admin_client.get(change_url(lost)).content.decode()
    calm_page = admin_client.get(change_url(calm)).content.decode()
    assert "0 of 3 allowed" in calm_page
    assert "rescued" not in calm_page


def test_filters_and_search(admin_client, make_task):
    a = make_task(task_name="mail.send_welcome", queue="mail", status="error")
    b = make_task(task_name="reports.build", queue="reports")

    def listed(query: str) -> set[Any]:
        response = admin_client.get(CHANGELIST + query)
        assert response.status_code == 200
        return {t.pk for t in response.context["cl"].result_list}

    assert listed("") == {a.pk, b.pk}
    assert listed("?status__exact=error") == {a.pk}
    assert listed("?queue=reports") == {b.pk}
    assert listed("?task_name=mail.send_welcome") == {a.pk}
    assert listed(f"?q={b.pk}") == {b.pk}
    assert listed("?q=WELCOME") == {a.pk}
    assert listed("?q=nothing-like-it") == set()
    assert listed("?created_at__gte=2000-01-01%2000:00:00%2B00:00") == {a.pk, b.pk}
    html = admin_client.get(CHANGELIST).content.decode()
    assert "?queue=mail" in html
    assert "?task_name=reports.build" in html


def test_the_detail_page_shows_call_outcome_history_worker_and_progress(admin_client, make_task):
    app.broker.heartbeat("w-1", {"host": "box", "pid": 42, "queues": None}, ttl=30)
    task = make_task(
        status="process",
        attempt=2,
        max_retries=3,
        args=[1, "two"],
        kwargs={"user_id": 7},
        worker_id="w-1",
        started_at=timezone.now(),
        progress={"done": 3, "total": 4, "message": "almost"},
        errors=[
            {
                "attempt": 1,
                "at": "2026-01-01T00:00:00",
                "type": "ValueError",
                "message": "bad",
                "traceback": "Traceback...ValueError: bad",
            }
        ],
    )
    html = admin_client.get(change_url(task)).content.decode()
    assert "&quot;user_id&quot;: 7" in html
    assert "&quot;two&quot;" in html
    assert '<progress class="qtasks-progress" max="1" value="0.7500">' in html
    assert "3 / 4" in html
    assert "almost" in html
    assert "ValueError" in html
    assert "Traceback...ValueError: bad" in html
    assert "w-1" in html
    assert "box" in html
    assert "alive" in html
    assert steer_url(task, "cancel") in html
    assert steer_url(task, "retry") not in html
    assert 'name="_save"' not in html  # nothing here is edited by hand


def test_the_detail_page_of_a_success_shows_its_result(admin_client, make_task):
    task = make_task(status="success", returning={"sent": True, "to": ["a@b.c"]})
    html = admin_client.get(change_url(task)).content.decode()
    assert "&quot;sent&quot;: true" in html
    assert steer_url(task, "retry") not in html
    assert steer_url(task, "cancel") not in html


# -- actions go through the library ----------------------------------------------------------
def test_list_actions_retry_and_cancel(admin_client, make_task):
    failed = make_task(status="error", attempt=1, finished_at=timezone.now())
    cancelled = make_task(status="cancel", finished_at=timezone.now())
    done = make_task(status="success")
    waiting = make_task()
    running = make_task(status="process", worker_id="w-9", attempt=1)

    response = action(admin_client, "retry_tasks", failed, cancelled, done)
    assert response.status_code == 302
    statuses = dict(TaskRecord.objects.values_list("pk", "status"))
    assert (statuses[failed.pk], statuses[cancelled.pk], statuses[done.pk]) == (
        "new",
        "new",
        "success",
    )

    response = action(admin_client, "cancel_tasks", waiting, running, done)
    assert response.status_code == 302
    waiting.refresh_from_db()
    running.refresh_from_db()
    assert waiting.status == "cancel"
    assert (running.status, running.cancel_requested) == ("process", True)
    assert "cancelled by admin in the admin" in running.errors[-1]["message"]
    messages = [str(m) for m in admin_client.get(CHANGELIST).context["messages"]]
    assert any("1 running task asked to stop" in m for m in messages)


def test_detail_buttons_retry_and_cancel(admin_client, make_task):
    failed = make_task(status="error")
    response = admin_client.post(steer_url(failed, "retry"))
    assert response.status_code == 302
    assert response["Location"] == change_url(failed)
    assert TaskRecord.objects.get(pk=failed.pk).status == "new"
    assert admin_client.post(steer_url(failed, "cancel")).status_code == 302
    assert TaskRecord.objects.get(pk=failed.pk).status == "cancel"
    missing = reverse("admin:django_qtasks_taskrecord_retry", args=["0" * 32])
    assert admin_client.post(missing).status_code in (302, 404)  # the admin's "not found"


def test_nothing_to_do_says_so(admin_client, make_task):
    done = make_task(status="success")
    action(admin_client, "retry_tasks", done)
    messages = [str(m) for m in admin_client.get(CHANGELIST).context["messages"]]
    assert any("Nothing to retry" in m for m in messages)


def test_pause_and_resume_a_queue(admin_client, make_task):
    make_task(queue="mail")
    response = admin_client.post(queue_url("mail", "pause"), {"next": DASHBOARD})
    assert response.status_code == 302
    assert response["Location"] == DASHBOARD
    assert app.paused_queues() == {"mail"}
    html = admin_client.get(DASHBOARD).content.decode()
    assert queue_url("mail", "resume") in html
    response = admin_client.post(queue_url("mail", "resume"), {"next": "https://evil.example/"})
    assert response["Location"] == CONFIG  # never redirected off-site
    assert app.paused_queues() == set()
    admin_client.post(queue_url("not a queue!", "pause"))
    assert app.paused_queues() == set()


def test_the_config_page_lists_workers_and_queues(admin_client, make_task):
    app.broker.heartbeat(
        "alive-1",
        {
            "host": "h1",
            "pid": 1,
            "queues": ["a"],
            "concurrency": 4,
            "running": 2,
            "last_beat": timezone.now().isoformat(),
        },
        ttl=30,
    )
    ConfigEntry.objects.create(
        name="workers",
        key="dead-1",
        value={"host": "h2", "pid": 2},
        expires_at=timezone.now() - dt.timedelta(minutes=5),
    )
    make_task(queue="reports")
    html = admin_client.get(CONFIG).content.decode()
    assert "alive-1" in html
    assert "h1" in html
    assert "dead-1" in html
    assert "expired" in html
    assert 'data-queue="reports"' in html
    assert queue_url("reports", "pause") in html
    assert "2 global config entries" in html  # not "2 global config"


# -- the dashboard ----------------------------------------------------------------------------
def test_dashboard_counts_throughput_queues_and_workers(admin_client, make_task):
    now = timezone.now()
    for minutes_ago, status in [(1, "success"), (1, "success"), (2, "error"), (90, "success")]:
        finished = now - dt.timedelta(minutes=minutes_ago)
        make_task(status=status, finished_at=finished, started_at=finished)
    make_task(created_at=now - dt.timedelta(minutes=10), run_after=now - dt.timedelta(minutes=10))
    make_task(status="process", queue="reports", worker_id="w")
    app.broker.heartbeat("w", {"host": "h", "pid": 1, "last_beat": now.isoformat()}, ttl=30)

    response = admin_client.get(DASHBOARD)
    assert response.status_code == 200
    context = response.context
    assert {k: v.value for k, v in context["counts"].items()} == {
        "new": 1,
        "process": 1,
        "retry": 0,
        "success": 3,
        "error": 1,
        "cancel": 0,
        "blocked": 0,
    }
    throughput = context["throughput"]
    assert (throughput.finished, throughput.failed) == (3, 1)
    assert throughput.failure_rate == pytest.approx(1 / 3)
    assert len(throughput.bars()) == 60
    queues = {q.name: q for q in context["queues"]}
    assert (queues["default"].waiting, queues["reports"].running) == (1, 1)
    assert dt.timedelta(minutes=9) < queues["default"].oldest_age < dt.timedelta(minutes=11)
    html = response.content.decode()
    assert "<svg" in html
    assert 'class="qtasks-bar-failed"' in html
    assert "33.3" in html
    fragment = admin_client.get(DASHBOARD + "?fragment=1")
    assert fragment.status_code == 200
    assert b"<html" not in fragment.content
    assert b"qtasks-chart" in fragment.content


def test_the_app_index_links_the_dashboard(admin_client):
    html = admin_client.get(reverse("admin:app_list", args=["django_qtasks"])).content.decode()
    assert DASHBOARD in html


# -- the cost of a page ---------------------------------------------------------------------
def _page_queries(client: Client, url: str) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return [q["sql"] for q in queries.captured_queries]


def test_pages_run_a_fixed_number_of_bounded_queries(admin_client, make_task):
    def costs() -> dict[str, list[str]]:
        return {
            url: _page_queries(admin_client, url)
            for url in (CHANGELIST, CHANGELIST + "?status__exact=new&queue=q1", DASHBOARD, CONFIG)
        }

    for i in range(3):
        make_task(queue=f"q{i}")
    few = costs()
    for i in range(120):
        make_task(queue=f"q{i % 5}", status=["new", "success", "error"][i % 3])
    many = costs()
    for url in few:
        assert len(many[url]) == len(few[url]), url
    table = TaskRecord._meta.db_table
    for url, queries in many.items():
        for sql in queries:
            if table not in sql or "FROM pg_class" in sql:
                continue  # the planner's statistics are not the table
            # Every read of the task table is bounded: by LIMIT, by a key, or by time.
            assert "LIMIT" in sql or "finished_at" in sql or '"uuid" =' in sql, (url, sql)
            assert "SELECT DISTINCT" not in sql.upper(), (url, sql)


def test_the_list_counts_up_to_a_cap_and_pages_stop_there(admin_client, make_task, monkeypatch):
    monkeypatch.setattr(dashboard, "LIST_COUNT_CAP", 5)
    for _ in range(8):
        make_task()
    response = admin_client.get(CHANGELIST + "?status__exact=new")
    paginator = response.context["cl"].paginator
    assert paginator.is_capped
    assert paginator.count == 6
    assert "more than 5 tasks" in response.content.decode()
    admin_client.get(CHANGELIST + "?status__exact=new&p=2")  # past the cap: still answers


def test_actions_stop_at_their_cap(admin_client, make_task, monkeypatch):
    from django_qtasks import admin as qtasks_admin

    monkeypatch.setattr(qtasks_admin, "ACTION_CAP", 2)
    tasks = [make_task() for _ in range(3)]
    action(admin_client, "cancel_tasks", *tasks)
    assert TaskRecord.objects.filter(status="cancel").count() == 2
    messages = [str(m) for m in admin_client.get(CHANGELIST).context["messages"]]
    assert any("Only the first 2" in m for m in messages)


def test_distinct_values_skip_through_the_index(make_task):
    for name in ["b", "a", "c", "a", "b"]:
        make_task(task_name=name, queue=f"q-{name}")
    assert dashboard.distinct_values("task_name") == ["a", "b", "c"]
    assert dashboard.distinct_values("queue", limit=2) == ["q-a", "q-b"]


@pytest.mark.postgres
def test_postgres_plans_use_the_admin_indexes(make_task):
    for _ in range(5):
        make_task()
    table = f'"{TaskRecord._meta.db_table}"'
    newest = "ORDER BY created_at DESC LIMIT 50"
    plans = {
        "list": f"SELECT uuid FROM {table} ORDER BY created_at DESC, uuid DESC LIMIT 50",
        "queue": f"SELECT uuid FROM {table} WHERE queue = 'x' {newest}",
        "name": f"SELECT uuid FROM {table} WHERE task_name = 'x' {newest}",
        "throughput": f"SELECT COUNT(*) FROM {table} WHERE finished_at >= now() - interval '1h'",
    }
    expected = {
        "list": "qtasks_created_idx",
        "queue": "qtasks_queue_idx",
        "name": "qtasks_name_idx",
        "throughput": "qtasks_finished_idx",
    }
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a 5-row table would be scanned
        for key, sql in plans.items():
            cursor.execute("EXPLAIN " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert expected[key] in plan, (key, plan)


@pytest.mark.postgres
def test_postgres_estimates_the_unfiltered_list(admin_client, make_task, monkeypatch):
    monkeypatch.setattr(dashboard, "LIST_COUNT_CAP", 3)
    for _ in range(6):
        make_task(status="success")
    with connection.cursor() as cursor:
        cursor.execute(f'ANALYZE "{TaskRecord._meta.db_table}"')  # what autovacuum does
    response = admin_client.get(CHANGELIST)
    paginator = response.context["cl"].paginator
    assert paginator.is_estimate
    assert paginator.count == 6
    assert "about 6 tasks" in response.content.decode()
    monkeypatch.setattr(dashboard, "SCAN_CAP", 3)
    counts = dashboard.status_counts()
    assert (counts["success"].kind, counts["success"].value) == ("about", 6)


# -- newcomer-facing details: times to the second, cancel feedback, GlobalConfig ------------
def test_every_task_time_has_its_seconds(admin_client, make_task):
    earlier = timezone.now() - dt.timedelta(days=3)
    task = make_task(
        status="success", created_at=earlier, started_at=earlier, finished_at=earlier
    )
    clock = timezone.localtime(earlier).strftime("%H:%M:%S")
    assert clock in admin_client.get(CHANGELIST).content.decode()  # an older day, too
    page = admin_client.get(change_url(task)).content.decode()
    assert page.count(timezone.localtime(earlier).strftime("%Y-%m-%d %H:%M:%S")) >= 3


def test_asking_a_running_task_to_cancel_says_what_happens(admin_client, make_task):
    running = make_task(status="process", worker_id="w-9", attempt=1, started_at=timezone.now())
    response = admin_client.post(steer_url(running, "cancel"), follow=True)
    [message] = [str(m) for m in response.context["messages"]]
    assert message.startswith("1 running task asked to stop: its worker stops it")
    assert "0 tasks" not in message
    page = response.content.decode()
    assert steer_url(running, "cancel") not in page, "no second button for the same request"
    assert 'id="qtasks-cancel-pending"' in page
    assert "yes: its worker stops it at its next check" in page
    waiting_page = admin_client.get(change_url(make_task())).content.decode()
    assert "icon-no" not in waiting_page  # "Cancel requested: no" is words, not a red icon


def test_entries_the_queue_writes_are_read_only_and_folded(admin_client):
    app.broker.heartbeat("w-1", {"host": "box", "pid": 42, "queues": None}, ttl=30)
    metrics = ConfigEntry.objects.create(
        name="metrics", key="w-1", value={f"tests.task_{i}": {"success": i} for i in range(20)}
    )
    flag = ConfigEntry.objects.create(name="queues", key="mail", value={"paused": True})
    heartbeat = ConfigEntry.objects.get(name="workers", key="w-1")

    listing = admin_client.get(CONFIG).content.decode()
    assert '<details class="qtasks-json">' in listing  # the long metrics value is folded

    for entry in (metrics, heartbeat):
        url = reverse("admin:django_qtasks_configentry_change", args=[entry.pk])
        page = admin_client.get(url).content.decode()
        assert 'name="_save"' not in page
        assert 'name="value"' not in page
        edit = {"name": entry.name, "key": "x", "value": "1"}
        assert admin_client.post(url, edit).status_code == 403
    flag_url = reverse("admin:django_qtasks_configentry_change", args=[flag.pk])
    assert 'name="_save"' in admin_client.get(flag_url).content.decode()  # still editable

    add = reverse("admin:django_qtasks_configentry_add")
    for name in ("workers", "metrics"):
        response = admin_client.post(add, {"name": name, "key": "fake", "value": "{}"})
        assert response.status_code == 200
        assert "written by the queue itself" in response.content.decode()
        assert not ConfigEntry.objects.filter(name=name, key="fake").exists()
