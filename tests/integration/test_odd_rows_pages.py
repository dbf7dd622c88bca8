"""Pages that show rows written straight into the table: the admin's task list, task
page and dashboard, and the example site's home page and feed answer 200 for deep JSON,
JSON of the wrong shape, unknown task names and statuses, and integers at their limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection
from django.urls import reverse

from django_qtasks.models import TaskRecord
from tests.rows import nested, written
from tests.testapp import tasks

pytestmark = pytest.mark.django_db

DEMO_TEMPLATES = Path(__file__).resolve().parents[2] / "example_project" / "demo" / "templates"

DEEP = nested(1990)  # past Python's decoder, within SQLite's JSON check (2,000)
# Odd rows: what each one holds, as (column, value, whether JSON) set on a new task.
ODD_ROWS: dict[str, list[tuple[str, object, bool]]] = {
    "deep-args": [("args", DEEP, True)],
    "deeper-args": [("args", nested(20_000), True)],  # SQLite and MariaDB refuse it
    "deep-kwargs": [("kwargs", '{"a": ' + DEEP + "}", True)],
    "deep-result": [("status", "success", False), ("returning", DEEP, True)],
    "deep-errors": [("status", "error", False), ("errors", DEEP, True)],
    "deep-progress": [("progress", '{"done": ' + DEEP + "}", True)],
    "deep-tags": [("tags", DEEP, True)],
    "args-object": [("args", '{"a": 1}', True)],
    "args-text": [("args", '"text"', True)],
    "args-number": [("args", "7", True)],
    "args-null": [("args", "null", True)],
    "kwargs-list": [("kwargs", "[1, 2]", True)],
    "kwargs-text": [("kwargs", '"x"', True)],
    "errors-object": [("status", "error", False), ("errors", '{"type": "x"}', True)],
    "errors-text": [("status", "retry", False), ("errors", '"boom"', True)],
    "errors-number": [("status", "error", False), ("errors", "5", True)],
    "errors-odd-items": [("errors", '[1, "x", null, {"type": 5, "message": {"m": [1]}}]', True)],
    "progress-list": [("progress", "[1, 2]", True)],
    "progress-text": [("progress", '"half"', True)],
    "progress-odd": [("progress", '{"done": "x", "total": 0, "message": [1]}', True)],
    "progress-huge": [("progress", '{"done": 1e400, "total": 10}', True)],
    "progress-negative": [("progress", '{"done": -5, "total": -1}', True)],
    "result-huge-number": [("status", "success", False), ("returning", "1e400", True)],
    "result-long-int": [("status", "success", False), ("returning", "9" * 5000, True)],
    "tags-text": [("tags", '"notalist"', True)],
    "tags-odd": [("tags", '[1, {"a": 2}, null]', True)],
    "unknown-task": [("task_name", "no.such.module.task", False)],
    "empty-task-name": [("task_name", "", False)],
    "unknown-status": [("status", "zombie", False)],
    "empty-status": [("status", "", False)],
    "huge-attempt": [("attempt", 2**31 - 1, False), ("max_retries", 2**31 - 1, False)],
    "huge-limits": [("concurrency_key", "k", False), ("max_concurrency", 2**31 - 1, False)],
    "lone-surrogate": [("args", '["\\ud800"]', True), ("tags", '["a\\udfff"]', True)],
    "surrogate-pair": [("args", '["\\ud83d\\ude42"]', True)],  # an escaped emoji: fine
    "not-json": [("args", "not json", True), ("kwargs", "{", True)],
}


@pytest.fixture
def example_site(settings):
    """The example's views on the test database: its URLs and its templates."""
    settings.ROOT_URLCONF = "tests.example_urls"
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [DEMO_TEMPLATES]}]


def odd_row(name: str) -> TaskRecord:
    task = tasks.add.add_task(1, 2)
    columns = ODD_ROWS[name]
    if not all(written(task.uuid, col, value, json=is_json) for col, value, is_json in columns):
        pytest.skip(f"{connection.vendor} refuses this row itself")
    return TaskRecord.objects.only("uuid").get(uuid=task.uuid)


@pytest.mark.parametrize("name", ODD_ROWS)
def test_the_admin_pages_answer_for_an_odd_row(admin_client, example_site, name: str) -> None:
    record = odd_row(name)
    tasks.add.add_task(3, 4)  # a good row beside it, listed too
    change = reverse("admin:django_qtasks_taskrecord_change", args=[record.uuid])
    for page in (
        change,
        reverse("admin:django_qtasks_taskrecord_changelist"),
        reverse("admin:django_qtasks_taskrecord_dashboard"),
    ):
        response = admin_client.get(page)
        assert response.status_code == 200, (page, response.content[:2000])


@pytest.mark.parametrize("name", ODD_ROWS)
def test_the_example_pages_answer_for_an_odd_row(client, example_site, name: str) -> None:
    record = odd_row(name)
    good = tasks.add.add_task(3, 4)
    response = client.get(reverse("demo:index"))
    assert response.status_code == 200
    assert str(good.uuid).encode() in response.content
    feed = client.get(reverse("demo:tasks_json"))
    assert feed.status_code == 200
    assert {row["uuid"] for row in feed.json()["tasks"]} >= {str(record.uuid), str(good.uuid)}
