"""The admin in a real browser: log in, list, filter, open a task, retry, cancel,
pause a queue (and see a worker obey), and watch the dashboard refresh itself."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from django_qtasks import app
from django_qtasks.models import TaskRecord
from tests.browser.conftest import screenshot
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
    screenshot(page, "admin-list")

    page.click("#changelist-filter >> text=error")
    page.wait_for_url("**status__exact=error**")
    statuses = page.locator("td.field-status_badge").all_inner_texts()
    assert statuses
    assert set(statuses) == {"error"}

    page.click(f"a[href*='{failed.uuid}']")
    page.wait_for_selector(".qtasks-traceback")
    assert "invoice-42" in page.inner_text(".field-args_pretty")
    assert page.locator(".qtasks-errors tbody tr").count() == 2  # both attempts
    screenshot(page, "admin-detail", height=1300)

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
    screenshot(page, "admin-dashboard")

    page.goto(f"{LIST}dashboard/?refresh=1")
    page.evaluate("window.qtasksMarker = 1")  # gone if the page reloads
    tasks.record.add_task("d", queue="images")
    page.wait_for_function("document.querySelector('[data-status=new]').textContent === '4'")
    assert page.evaluate("window.qtasksMarker") == 1
