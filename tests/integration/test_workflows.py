"""Chains and groups through an in-process worker: what is stored at enqueue, how each
stage is released or cancelled, and what the handles, the admin and immediate mode see.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_qtasks import Chain, app, chain, group
from django_qtasks.api.task import Outcome
from django_qtasks.contrib import dashboard
from django_qtasks.contrib.testing import immediate
from django_qtasks.exceptions import FlowFailed
from django_qtasks.models import TaskRecord, TaskStatus
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def rows(flow: Any) -> list[tuple[str, str, list[Any], Any]]:
    """(task name, status, args, result) of every task of a flow, in flow order."""
    found = {r.uuid: r for r in TaskRecord.objects.filter(flow_id=flow.flow_id)}
    return [
        (found[t.uuid].task_name, found[t.uuid].status, found[t.uuid].args,
         found[t.uuid].returning)
        for t in flow.tasks
    ]  # fmt: skip


# -- chains ---------------------------------------------------------------------------------
def test_a_chain_is_stored_whole_and_passes_each_result_as_the_last_argument(run_worker):
    flow = chain(tasks.add(1, 2), tasks.add(10), tasks.add(100)).add_task()

    assert [t.status for t in flow.tasks] == ["new", "blocked", "blocked"]
    assert {t.flow_id for t in flow.tasks} == {flow.flow_id}
    assert [(t.flow_stage, t.flow_index) for t in flow.tasks] == [(0, None), (1, None), (2, None)]
    assert TaskRecord.objects.filter(flow_id=flow.flow_id, status="blocked").count() == 2

    assert run_worker() == 0
    assert rows(flow) == [
        ("tests.testapp.tasks.add", "success", [1, 2], 3),
        ("tests.testapp.tasks.add", "success", [10, 3], 13),
        ("tests.testapp.tasks.add", "success", [100, 13], 113),
    ]
    final = flow.wait(timeout=5)
    assert (final.uuid, final.returning) == (flow.last.uuid, 113)


def test_a_failed_step_cancels_every_later_step_and_says_which_failed(run_worker):
    flow = chain(tasks.add(1, 1), tasks.always_fail(), tasks.add(1), tasks.add(2)).add_task()
    assert run_worker() == 0

    assert [status for _, status, _, _ in rows(flow)] == ["success", "error", "cancel", "cancel"]
    failed = flow.tasks[1].uuid
    for task in flow.refresh().tasks[2:]:
        assert str(failed) in task.traceback
        assert task.errors[-1]["type"] == "django_qtasks.exceptions.TaskCancelled"
        assert "an earlier step of its flow" in task.errors[-1]["message"]
    assert Execution.objects.filter(key="2").count() == 2  # tried twice (retry=1), then error
    assert flow.wait(timeout=5).status == "cancel"


def test_a_retry_releases_nothing_until_the_step_succeeds(run_worker):
    flow = chain(tasks.flaky("f", 2), tasks.add(5)).add_task()
    assert run_worker() == 0
    assert rows(flow)[1] == ("tests.testapp.tasks.add", "success", [5, 3], 8)


def test_cancelling_a_blocked_step_cancels_the_steps_after_it(run_worker):
    flow = chain(tasks.record("first"), tasks.length(), tasks.add(1)).add_task()
    cancelled = app.cancel(flow.tasks[1].uuid, "not needed")
    assert cancelled is not None
    assert cancelled.status == "cancel"
    assert flow.refresh().tasks[2].status == "cancel"

    assert run_worker() == 0
    assert [status for _, status, _, _ in rows(flow)] == ["success", "cancel", "cancel"]


def test_a_step_lost_for_good_cancels_the_rest():
    flow = chain(tasks.record("lost"), tasks.length()).add_task()
    claimed = app.broker.storage.claim("dead-worker", None, 10)
    assert [t.uuid for t in claimed] == [flow.tasks[0].uuid]
    TaskRecord.objects.filter(uuid=flow.tasks[0].uuid).update(rescues=3)  # its allowance spent

    assert app.broker.storage.rescue("dead-worker") == [(flow.tasks[0].uuid, "error")]
    assert [t.status for t in flow.refresh().tasks] == ["error", "cancel"]


# -- groups ---------------------------------------------------------------------------------
def test_a_group_runs_its_members_and_collects_results_in_member_order(run_worker):
    flow = group(tasks.add(3, 3), tasks.add(1, 1), tasks.add(2, 2)).add_task()
    assert [(t.status, t.flow_stage, t.flow_index) for t in flow.tasks] == [
        ("new", 0, 0), ("new", 0, 1), ("new", 0, 2),
    ]  # fmt: skip
    assert run_worker(concurrency=3) == 0
    assert flow.results(timeout=5) == [6, 2, 4]


def test_a_chain_through_a_group_fans_out_and_gathers(run_worker):
    flow = chain(tasks.add(1, 0), group(tasks.add(10), tasks.add(20)), tasks.total()).add_task()
    assert [t.status for t in flow.tasks] == ["new", "blocked", "blocked", "blocked"]
    assert run_worker(concurrency=2) == 0
    assert rows(flow)[1:] == [
        ("tests.testapp.tasks.add", "success", [10, 1], 11),
        ("tests.testapp.tasks.add", "success", [20, 1], 21),
        ("tests.total", "success", [[11, 21]], 32),
    ]
    assert flow.wait(timeout=5).returning == 32


def test_a_failed_member_cancels_what_follows_the_group(run_worker):
    flow = chain(group(tasks.add(1, 1), tasks.always_fail("m")), tasks.total()).add_task()
    assert run_worker() == 0
    assert [status for _, status, _, _ in rows(flow)] == ["success", "error", "cancel"]

    members = group(tasks.add(1, 1), tasks.always_fail("n")).add_task()
    assert run_worker() == 0
    with pytest.raises(FlowFailed, match="ended error") as failed:
        members.results(timeout=5)
    assert failed.value.task.uuid == members.tasks[1].uuid


# -- the API --------------------------------------------------------------------------------
def test_bad_flows_are_refused_before_anything_is_stored():
    with pytest.raises(ValueError, match="at least one step"):
        chain()
    with pytest.raises(ValueError, match="at least one task call"):
        group()
    with pytest.raises(TypeError, match=r"chain\(\) step 1 is SyncTask, not a task call"):
        chain(tasks.add(1, 2), tasks.add)
    with pytest.raises(TypeError, match="groups hold task calls only"):
        group(tasks.add(1, 2), group(tasks.add(1, 1)))
    with pytest.raises(ValueError, match="cannot end with a group"):
        chain(tasks.add(1, 2), group(tasks.add(1), tasks.add(2)))
    with pytest.raises(TypeError, match="not JSON-serializable"):
        chain(tasks.add(1, 2), tasks.add(object())).add_task()
    assert TaskRecord.objects.count() == 0


def test_nested_chains_are_spliced_into_one():
    inner = chain(tasks.add(1), tasks.add(2))
    outer = chain(tasks.add(0, 0), inner, tasks.add(3))
    assert isinstance(outer, Chain)
    assert len(outer.steps) == 4


def test_async_apps_await_the_enqueue_and_the_result(run_worker):
    async def enqueue() -> Any:
        return await chain(tasks.async_app_add(1, 2), tasks.async_app_add(4)).add_task()

    flow = async_to_sync(enqueue)()
    assert [t.status for t in flow.tasks] == ["new", "blocked"]
    assert run_worker() == 0
    assert async_to_sync(flow.await_result)(5).returning == 7


def test_immediate_mode_runs_the_whole_flow_in_add_task():
    with immediate():
        flow = chain(tasks.add(1, 2), group(tasks.add(1), tasks.add(2)), tasks.total()).add_task()
    assert [(t.status, t.returning) for t in flow.tasks] == [
        ("success", 3), ("success", 4), ("success", 5), ("success", 9),
    ]  # fmt: skip


# -- admin, dashboard, retention ---------------------------------------------------------------
@pytest.fixture
def viewer(django_user_model: Any) -> Callable[[], Client]:
    def login() -> Client:
        user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
        user.user_permissions.add(
            Permission.objects.get(
                codename="view_taskrecord", content_type__app_label="django_qtasks"
            )
        )
        client = Client()
        client.force_login(user)
        return client

    return login


def test_the_task_page_links_previous_next_and_group_members(viewer):
    flow = chain(tasks.add(1, 0), group(tasks.add(10), tasks.add(20)), tasks.total()).add_task()
    first, member, other, last = flow.tasks
    client = viewer()

    def change(task: Any) -> str:
        return reverse("admin:django_qtasks_taskrecord_change", args=[task.uuid])

    page = client.get(change(member)).content.decode()
    for label, target in (("previous step", first), ("group members", other), ("next step", last)):
        assert label in page
        assert change(target) in page
    assert change(member) not in page.split("group members")[1].split("next step")[0]
    assert f"?flow_id={flow.flow_id}" in page
    assert "qtasks-status-blocked" in page

    plain = app.add_task("tests.record", "plain")
    assert "previous step" not in client.get(change(plain)).content.decode()

    listing = client.get(reverse("admin:django_qtasks_taskrecord_changelist"),
                         {"flow_id": str(flow.flow_id)})  # fmt: skip
    assert listing.status_code == 200
    assert listing.context["cl"].result_count == 4
    blocked = client.get(reverse("admin:django_qtasks_taskrecord_changelist"),
                         {"status__exact": "blocked"})  # fmt: skip
    assert blocked.context["cl"].result_count == 3


def test_blocked_tasks_are_neither_waiting_nor_running_nor_prunable():
    chain(tasks.add(1, 2), tasks.add(3)).add_task(queue="flows")
    queues, _capped = dashboard.queue_stats()
    row = next(q for q in queues if q.name == "flows")
    assert (row.waiting, row.running) == (1, 0)
    assert app.broker.storage.count_prunable(timezone.now()) == 0
    assert TaskStatus.BLOCKED.value == "blocked"


def finish(task: Any, result: Any) -> None:
    """Claim one given task and store its success, as a worker would."""
    (claimed,) = app.broker.storage.claim("w", None, 1, uuids=[task.uuid])
    assert app.broker.storage.finish(claimed, Outcome("success", returning=result))


def test_pruning_keeps_finished_steps_whose_flow_still_waits():
    flow = chain(group(tasks.add(1, 1), tasks.add(1, 2)), tasks.total()).add_task()
    plain = app.add_task("tests.record", "plain")
    finish(flow.tasks[0], 2)
    finish(plain, "plain")
    later = timezone.now() + dt.timedelta(days=1)

    assert app.broker.storage.prune(later) == 1  # the plain task only
    assert TaskRecord.objects.filter(uuid=flow.tasks[0].uuid).exists()
    finish(flow.tasks[1], 3)
    assert flow.refresh().tasks[2].args == [[2, 3]]
    assert app.broker.storage.prune(later) == 2  # both members, once released


def test_the_examples_of_the_docs_page_run():
    """docs/workflows.md, every Python block in order, in immediate mode."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "workflows.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 6
    namespace: dict[str, Any] = {"__name__": "docs_workflows"}
    with immediate():
        for block in blocks:
            exec(compile(block, str(page), "exec"), namespace)
        assert async_to_sync(namespace["enqueue"])() == 4
