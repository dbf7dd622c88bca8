"""The demo's own tests, written as a project using django-qtasks would write them.

Run them with pytest-django (``docs/testing.md`` mirrors these tests)::

    pytest example_project/demo/tests.py --ds example_project.settings

The suite runs them that way, in a subprocess (``tests/test_testing_plugin.py``).
"""

from __future__ import annotations

from django.db import transaction
from django.test import TestCase
from django.urls import reverse

from django_qtasks import app
from django_qtasks.contrib.testing import (
    assert_task_enqueued,
    assert_task_not_enqueued,
    immediate,
    run_pending_tasks,
)

from . import tasks


# -- pytest-django, with the fixtures the package ships ------------------------------------
def test_the_add_button_enqueues_a_task(client, qtasks_enqueued):
    response = client.post(reverse("demo:start", args=["add"]), {"a": 20, "b": 22})
    assert response.status_code == 302
    qtasks_enqueued.assert_enqueued(tasks.add_numbers, args=[20, 22], status="new")
    assert qtasks_enqueued.names == ["example_project.demo.tasks.add_numbers"]


def test_a_bad_number_enqueues_nothing(client, qtasks_enqueued):
    client.post(reverse("demo:start", args=["add"]), {"a": "twenty", "b": 22})
    assert len(qtasks_enqueued) == 0


def test_the_task_runs_when_the_queue_is_drained(client, qtasks_run_pending):
    client.post(reverse("demo:start", args=["add"]), {"a": 20, "b": 22})
    client.post(reverse("demo:start", args=["failing"]))
    ran = {task.task_name.rsplit(".", 1)[-1]: task for task in qtasks_run_pending()}
    assert (ran["add_numbers"].status, ran["add_numbers"].returning) == ("success", 42)
    assert ran["parse_json"].status == "error"
    assert ran["parse_json"].attempt == 1, "a bad input is not retried"


def test_a_delayed_task_waits(client, qtasks_run_pending):
    client.post(reverse("demo:start", args=["add"]), {"a": 1, "b": 2, "delay": 60})
    assert qtasks_run_pending() == []
    assert_task_enqueued(tasks.add_numbers, args=[1, 2], status="new")


def test_the_flaky_service_answers_on_its_last_attempt(qtasks_immediate):
    task = tasks.call_flaky_service.add_task()
    assert task.status == "success"
    assert task.returning == "answered on attempt 4 of 4"
    assert [error["type"] for error in task.errors] == ["builtins.ConnectionError"] * 3


def test_progress_and_async_tasks(qtasks_immediate):
    counted = tasks.count_slowly(steps=2, delay=0).add_task()
    assert counted.returning == "counted to 2"
    assert counted.progress == {"done": 2, "total": 2, "message": "step 2 of 2"}
    waited = tasks.wait_together.add_task([0.01, 0.02])
    assert waited.status == "success"


def test_the_page_shows_what_ran(client, qtasks_immediate):
    client.post(reverse("demo:start", args=["add"]), {"a": 2, "b": 3})
    feed = client.get(reverse("demo:tasks_json")).json()
    [row] = feed["tasks"]
    assert (row["status"], row["result"], row["call"]) == ("success", "5", "add_numbers(2, 3)")


# -- Django's TestCase -------------------------------------------------------------------
@immediate()
class ImmediateModeTests(TestCase):
    def test_the_view_runs_the_task(self):
        response = self.client.post(
            reverse("demo:start", args=["add"]), {"a": 20, "b": 22}, follow=True
        )
        assert "Queued add_numbers as task" in response.content.decode()
        [task] = assert_task_enqueued(tasks.add_numbers, args=[20, 22], status="success")
        assert task.returning == 42

    def test_inside_atomic_the_task_runs_on_commit(self):
        with self.captureOnCommitCallbacks(execute=True):
            with transaction.atomic():
                task = tasks.add_numbers.add_task(1, 1)
            assert task.status == "new", "nothing runs before the commit"
        done = app.get(task.uuid)
        assert done is not None
        assert done.returning == 2


class DrainTests(TestCase):
    def test_enqueue_then_run(self):
        tasks.parse_json.add_task('{"ok": true}', priority=10)
        tasks.add_numbers.add_task(1, 2)
        first, second = run_pending_tasks()
        assert (first.task_name, first.returning) == (tasks.parse_json.name, {"ok": True})
        assert second.returning == 3
        assert_task_not_enqueued(tasks.count_slowly)
