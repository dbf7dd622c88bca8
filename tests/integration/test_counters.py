"""Worker-side task counters: flushed, retired and folded without losing or doubling a
count, and GlobalConfig.merge exact under concurrent writers."""

from __future__ import annotations

import pytest

from django_qtasks import app
from django_qtasks.global_config.counters import (
    METRICS,
    RETIRED,
    TaskCounters,
    add,
    retire_orphans,
    totals,
)
from django_qtasks.models import ConfigEntry
from tests.helpers import in_threads
from tests.testapp.tasks import record


def test_add_sums_nested_dicts_key_by_key():
    a = {"q": {"t": {"success": 1, "duration": {"count": 1, "sum": 0.5, "buckets": {"1.0": 1}}}}}
    b = {"q": {"t": {"error": 2, "duration": {"count": 2, "sum": 1.5, "buckets": {"5.0": 2}}}},
         "r": {"u": {"retry": 1}}}  # fmt: skip
    assert add(a, None, b) == {
        "q": {"t": {"success": 1, "duration": {"count": 3, "sum": 2.0,
                                               "buckets": {"1.0": 1, "5.0": 2}}, "error": 2}},
        "r": {"u": {"retry": 1}},
    }  # fmt: skip
    assert add(None, None) is None


@pytest.mark.django_db
def test_flush_retire_and_fold_keep_the_sum():
    config = app.broker.storage.global_config
    task = record.add_task("k")
    one, two = TaskCounters(), TaskCounters()
    one.record(task, "success", 0.2)
    one.record(task, "retry", 3.0)
    one.flush(config, "w1")
    two.record(task, "success", 0.01)
    two.flush(config, "w2")
    one.record(task, "error", 0.3)
    one.flush(config, "w1")
    series = totals(config)["default"]["tests.record"]
    assert (series["success"], series["retry"], series["error"]) == (2, 1, 1)
    assert series["duration"]["count"] == 4
    assert series["duration"]["buckets"] == {"0.25": 1, "5.0": 1, "0.01": 1, "0.5": 1}
    before = totals(config)

    one.record(task, "success", 0.2)
    one.retire(config, "w1")  # leaves: its entry and its last counts go to the retired
    keys = set(ConfigEntry.objects.filter(name=METRICS).values_list("key", flat=True))
    assert keys == {"w2", RETIRED}
    last = {"success": 1, "duration": {"count": 1, "sum": 0.2, "buckets": {"0.25": 1}}}
    expected = add(before, {"default": {"tests.record": last}})
    assert totals(config) == expected

    assert retire_orphans(config, live=["w2"]) == 0
    assert retire_orphans(config, live=[]) == 1  # w2 died
    assert list(ConfigEntry.objects.filter(name=METRICS).values_list("key", flat=True)) == [
        RETIRED
    ]
    assert totals(config) == expected


@pytest.mark.django_db(transaction=True)
def test_merge_is_exact_under_concurrent_writers():
    config = app.broker.storage.global_config
    threads, rounds = 4, 25

    def writer(n: int) -> None:
        for _ in range(rounds):
            config.merge(METRICS, "shared", lambda current, taken: (current or 0) + 1)
            # ... and folding a private entry into the shared one, as a retire does
            config.merge(METRICS, f"own-{n}", lambda current, taken: (current or 0) + 1)
            config.merge(
                METRICS, "shared", lambda current, taken: (current or 0) + sum(taken),
                take=[f"own-{n}"],
            )  # fmt: skip

    in_threads(writer, [(n,) for n in range(threads)])
    assert config.items(METRICS) == {"shared": 2 * threads * rounds}
