"""The admin in a real browser: log in, list, filter, open a task, retry, cancel,
pause a queue (and see a worker obey), and watch the dashboard refresh itself."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.utils import timezone

from django_qtasks import app
from django_qtasks.models import ScheduleRun, TaskRecord
from tests.browser.conftest import logged_in, screenshot
from tests.testapp import tasks

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LIST = "/admin/django_qtasks/taskrecord/"


def run_worker(**options: Any) -> None:
    """An in-process worker in burst mode: runs what is ready, then returns."""
    app.build_starter(burst=True, concurrency=2, **options).run(install_signals=False)


def history() -> None:
    """A realistic table: an hour of finished work with a few failures."""
    now = timezone.now()
    names = ["shop.tasks.send_receipt", "shop.tasks.resize_image", "reports.tasks.nightly"]
    queues = ["default", "mail", "images"]
    rows = []
    for minute in range(60):
        for i in range(3 + (minute * 5) % 8 + minute // 12):
            finished = now - dt.timedelta(minutes=minute, seconds=i)
            rows.append(
                TaskRecord(
                    task_name=names[i % 3],
                    queue=queues[i % 3],
                    status="error" if minute % 7 == 0 and i < 2 else "success",
                    attempt=1,
                    args=[minute, i],
                    run_after=finished - dt.timedelta(seconds=2),
                    created_at=finished - dt.timedelta(seconds=2),
                    updated_at=finished,
                    started_at=finished - dt.timedelta(seconds=1.5),
                    finished_at=finished,
                )
            )
    TaskRecord.objects.bulk_create(rows)


def test_list_filter_open_and_retry_a_failed_task(page):
    history()
    failed = tasks.always_fail.add_task("invoice-42")  # retry=1: two attempts, then error
    tasks.record.add_task("welcome-mail")
    run_worker()
    assert app.get(failed.uuid).status == "error"
    tasks.record.add_task("later", queue="mail")
    tasks.slow.add_task("report", 1.5, queue="images")

    page.goto(LIST)
    assert page.locator(".qtasks-badge.qtasks-status-error").count() >= 1

    page.click("#changelist-filter >> text=error")
    page.wait_for_url("**status__exact=error**")
    statuses = page.locator("td.field-status_badge").all_inner_texts()
    assert statuses
    assert set(statuses) == {"error"}

    page.click(f"a[href*='{failed.uuid}']")
    page.wait_for_selector(".qtasks-traceback")
    assert "invoice-42" in page.inner_text(".field-args_pretty")
    assert page.locator(".qtasks-errors tbody tr").count() == 2  # both attempts

    page.click("button[name=retry]")
    page.wait_for_selector(".messagelist")
    assert "sent back to the queue" in page.inner_text(".messagelist")
    assert app.get(failed.uuid).status == "new"


def test_cancel_with_the_list_action_and_the_detail_button(page):
    waiting = tasks.record.add_task("to-cancel")
    other = tasks.record.add_task("to-cancel-too")

    page.goto(LIST)
    page.check(f"input[name=_selected_action][value='{waiting.uuid}']")
    page.select_option("select[name=action]", "cancel_tasks")
    page.click("button[name=index]")
    page.wait_for_selector(".messagelist")
    assert "1 task cancelled" in page.inner_text(".messagelist")
    assert app.get(waiting.uuid).status == "cancel"

    page.goto(f"{LIST}{other.uuid}/change/")
    page.click("button[name=cancel]")
    page.wait_for_selector(".messagelist")
    assert app.get(other.uuid).status == "cancel"
    assert page.locator("button[name=retry]").count() == 1  # now it can come back


def test_pause_a_queue_and_a_worker_obeys(page):
    held = tasks.record.add_task("held", queue="mail")
    page.goto(f"{LIST}dashboard/")
    page.click("tr[data-queue=mail] button")
    page.wait_for_selector("tr[data-queue=mail] .qtasks-status-cancel")  # the "paused" badge
    assert app.paused_queues() == {"mail"}

    free = tasks.record.add_task("free", queue="default")
    run_worker()
    assert app.get(free.uuid).status == "success"
    assert app.get(held.uuid).status == "new"  # the worker left the paused queue alone

    page.click("tr[data-queue=mail] button")
    page.wait_for_selector("tr[data-queue=mail] .qtasks-status-success")  # "active" again
    run_worker()
    assert app.get(held.uuid).status == "success"


def test_the_dashboard_is_linked_and_refreshes_without_a_reload(page):
    history()
    app.broker.heartbeat(
        "web-1.example:4242",
        {
            "host": "web-1.example",
            "pid": 4242,
            "queues": ["default", "mail"],
            "concurrency": 8,
            "running": 3,
            "last_beat": timezone.now().isoformat(),
        },
        ttl=60,
    )
    for key in ("a", "b", "c"):
        tasks.record.add_task(key, queue="images")
    page.goto("/admin/django_qtasks/")
    page.click("#qtasks-dashboard-link")
    page.wait_for_selector(".qtasks-chart rect.qtasks-bar")
    assert "web-1.example" in page.inner_text("#qtasks-workers")
    assert page.inner_text("[data-status=new]") == "3"

    page.goto(f"{LIST}dashboard/?refresh=1")
    page.evaluate("window.qtasksMarker = 1")  # gone if the page reloads
    tasks.record.add_task("d", queue="images")
    page.wait_for_function("document.querySelector('[data-status=new]').textContent === '4'")
    assert page.evaluate("window.qtasksMarker") == 1


def overflow(page: Any, selector: str) -> int:
    """How many pixels ``selector`` is wider than the room it has (0: no horizontal
    scroll), and the page itself no wider than the window."""
    return int(
        page.evaluate(
            """(selector) => {
                const el = document.querySelector(selector);
                const page = document.documentElement;
                return Math.max(
                    el.scrollWidth - el.clientWidth, page.scrollWidth - page.clientWidth
                );
            }""",
            selector,
        )
    )


@pytest.mark.parametrize("width", [1280, 1920])
def test_the_admin_fits_the_window_with_the_sidebar_open(
    chromium, live_server, admin_user, settings, width
):
    """The list's columns that matter, without horizontal scrolling, at 1280 and 1920 px
    with the app sidebar open; every time to the second; a running task asked to
    cancel says so instead of offering the button again. Takes the docs' pictures."""
    history()
    failed = tasks.always_fail.add_task("invoice-42")
    run_worker()
    tasks.record.add_task("later", queue="mail")
    running = tasks.record.add_task("a-long-report-name", queue="reports")
    TaskRecord.objects.filter(pk=running.uuid).update(
        status="process", attempt=1, started_at=timezone.now(), worker_id="web-1:4242"
    )
    # A schedule every 10 seconds whose last run succeeded: its times need their seconds.
    settings.QTASKS = {
        **getattr(settings, "QTASKS", {}),
        "SCHEDULE": {
            "every-10-s": {"task": "tests.record", "cron": "* * * * * */10", "args": ["tick"]}
        },
    }
    tick = timezone.now().replace(microsecond=0) - dt.timedelta(seconds=5)
    ScheduleRun.objects.create(
        schedule="every-10-s", tick=tick, task_uuid=failed.uuid, task_name="tests.record",
        enqueued_at=tick,
    )
    now = timezone.now()
    app.broker.heartbeat(
        "web-1:4242",
        {"host": "web-1", "pid": 4242, "queues": None, "concurrency": 4, "running": 1,
         "last_beat": (now - dt.timedelta(seconds=2)).isoformat()},
        ttl=60,
    )
    page = logged_in(chromium, live_server.url, width, sidebar=True)
    try:
        page.goto(LIST)
        assert page.locator("#nav-sidebar").is_visible()
        screenshot(page, "admin-list")  # first: the picture shows what a failure is about
        assert overflow(page, "#changelist .results") == 0
        for column in ("task", "attempts", "created", "finished", "duration"):
            cell = page.locator(f"#result_list tbody .field-{column}").first
            box = cell.bounding_box()
            assert box is not None
            assert box["x"] + box["width"] <= width, f"{column} is cut off"
        assert re.fullmatch(
            r"(\w{3} \d{2}\s+)?\d{2}:\d{2}:\d{2}",
            page.locator("#result_list td.field-created").first.inner_text().strip(),
        )

        page.goto(f"{LIST}{failed.uuid}/change/")
        page.wait_for_selector(".qtasks-traceback")
        assert re.search(r"\d{2}:\d{2}:\d{2}", page.inner_text(".field-finished_time"))
        assert "no" in page.inner_text(".field-cancel_state")
        retry = page.locator("button[name=retry]").bounding_box()
        history_link = page.locator(".object-tools a.historylink").bounding_box()
        assert retry is not None
        assert history_link is not None
        assert abs(retry["y"] - history_link["y"]) <= 1, "Retry and History line up"
        assert abs(retry["height"] - history_link["height"]) <= 1
        screenshot(page, "admin-detail", height=1300)

        page.goto(f"{LIST}{running.uuid}/change/")
        page.click("button[name=cancel]")
        page.wait_for_selector(".messagelist")
        message = page.inner_text(".messagelist")
        assert "1 running task asked to stop" in message
        assert "0 tasks" not in message
        assert page.locator("button[name=cancel]").count() == 0
        assert page.inner_text("#qtasks-cancel-pending").upper() == "CANCEL REQUESTED"

        # The schedule's last run (the failed task, run again) succeeded.
        TaskRecord.objects.filter(pk=failed.uuid).update(status="success")
        page.goto(f"{LIST}dashboard/")
        page.wait_for_selector(".qtasks-chart rect.qtasks-bar")
        screenshot(page, "admin-dashboard", height=1000)
        assert overflow(page, "#content") == 0
        schedule = page.locator("tr[data-schedule=every-10-s]")
        assert len(re.findall(r"\d{2}:\d{2}:\d{2}", schedule.inner_text())) == 2
        badge = schedule.locator("a.qtasks-badge")
        assert badge.evaluate("el => getComputedStyle(el).color") == "rgb(255, 255, 255)"
    finally:
        page.context.close()
