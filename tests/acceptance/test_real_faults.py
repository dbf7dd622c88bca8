"""Real faults under real worker processes, with the library's defaults and plain tasks
(no ``retry=``): a worker SIGKILLed mid-batch, a task that ends its worker every time,
PostgreSQL restarted mid-run, a worker host cut off the network. Every task must end
``success`` (runs may repeat: at-least-once), but the one that kills its worker, which
must stop, in ``error``. Each test prints (and appends to ``$QTASKS_FAULT_REPORT``) a
``FAULT <name>: tasks=... success=... error=... duplicated=...`` line.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import Count, Sum

from django_qtasks import app
from django_qtasks.models import TaskRecord
from tests.faultkit import (
    CONFIG,
    EXECUTIONS,
    TASKS,
    NetworkHost,
    PrivatePostgres,
    log_text,
    private_site,
    report,
    tally,
)
from tests.helpers import wait_until
from tests.testapp.models import Execution

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]
FINISHED = ("success", "error", "cancel")
# Heartbeats for the tests that are not about their defaults: a lost worker's tasks
# come back within about a second instead of 30 to 45.
QUICK_BEATS = {"HEARTBEAT_INTERVAL": 0.2, "HEARTBEAT_TIMEOUT": 1.0, "RESCUE_INTERVAL": 0.2}


# -- on the suite's database (any vendor) -----------------------------------------------
def enqueue(keys: Sequence[str], seconds: float = 0.02) -> None:
    with transaction.atomic():
        for key in keys:
            app.add_task("tests.work", key, seconds)


def open_count() -> int:
    count = TaskRecord.objects.exclude(status__in=FINISHED).count()
    connection.close()  # a worker may be SIGKILLed holding nothing of ours
    return count


def numbers(keys: Sequence[str], task_name: str = "tests.work") -> dict[str, int]:
    rows = TaskRecord.objects.filter(task_name=task_name).values_list("args", "status")
    statuses = {args[0]: status for args, status in rows}
    runs = dict(Execution.objects.values_list("key").annotate(n=Count("id")))
    rescues = TaskRecord.objects.filter(task_name=task_name).aggregate(n=Sum("rescues"))["n"]
    return {**tally(statuses, runs, keys), "rescued": rescues or 0}


def holders() -> dict[int, int]:
    """pid -> running (or claimed-ahead) rows, from the rows' worker ids (host:pid:tag)."""
    held: dict[int, int] = {}
    running = TaskRecord.objects.filter(status="process")
    for worker_id in running.values_list("worker_id", flat=True):
        pid = int(worker_id.split(":")[-2])
        held[pid] = held.get(pid, 0) + 1
    connection.close()
    return held


def test_sigkill_mid_batch_with_the_defaults_loses_no_plain_task(worker_processes, tmp_path):
    keys = [f"s{n}" for n in range(1500)]
    enqueue(keys)
    log = tmp_path / "workers.log"
    workers = [worker_processes.start("--concurrency", "4", log=log) for _ in range(3)]
    kills = 0
    for _ in range(3):
        # A worker that holds rows right now (running or claimed ahead): SIGKILL it.
        busy = wait_until(
            lambda: [p for p in workers if holders().get(p.pid)] or not open_count(),
            timeout=60, message="a worker holding tasks",
        )  # fmt: skip
        if busy is True:
            break
        victim = busy[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        kills += 1
        workers[workers.index(victim)] = worker_processes.start("--concurrency", "4", log=log)
    # The dead workers' tasks come back after HEARTBEAT_TIMEOUT (30 s) and a rescuer run.
    wait_until(lambda: not open_count(), timeout=240, message=f"the drain\n{log_text(log)[-3000:]}")
    result = numbers(keys)
    report("sigkill", {**result, "kills": kills})
    assert kills > 0
    assert (result["success"], result["other"], result["unproven"]) == (len(keys), 0, 0), result
    assert result["rescued"] > 0  # the kills did hit running tasks


def test_a_task_that_ends_its_worker_every_time_stops_the_others_unharmed(
    worker_processes, tmp_path
):
    worker_processes.env["QTASKS_TEST_SETTINGS"] = json.dumps(QUICK_BEATS)
    doomed = app.add_task("tests.hard_exit", "doomed", priority=10)
    keys = [f"x{n}" for n in range(300)]
    enqueue(keys)
    log = tmp_path / "workers.log"
    workers = [worker_processes.start("--concurrency", "2", log=log) for _ in range(2)]
    restarts = 0

    def settled() -> bool:
        nonlocal restarts
        for index, proc in enumerate(workers):
            if proc.poll() is not None:  # as a process manager would: start it again
                workers[index] = worker_processes.start("--concurrency", "2", log=log)
                restarts += 1
        return not open_count()

    wait_until(settled, timeout=120, interval=0.05, message=f"the drain\n{log_text(log)[-3000:]}")
    row = TaskRecord.objects.get(uuid=doomed.uuid)
    result = numbers(keys)
    report("own_exit", {**result, "doomed": row.status, "doomed_runs": row.rescues,
                        "worker_restarts": restarts})  # fmt: skip
    assert row.status == "error"
    assert row.rescues == 4  # lost 4 times: MAX_RESCUES (3) + 1
    assert Execution.objects.filter(key="doomed").count() == 4
    assert row.errors[-1]["message"].startswith("Task lost 4 times, more than QTASKS")
    assert (result["success"], result["other"], result["unproven"]) == (len(keys), 0, 0), result


# -- on a PostgreSQL server of the test's own ------------------------------------------
def private_numbers(server: PrivatePostgres, keys: Sequence[str]) -> dict[str, int]:
    statuses = dict(server.query(
        f"SELECT args->>0, status FROM {TASKS} WHERE task_name = 'tests.work'"
    ))  # fmt: skip
    runs = dict(server.query(f"SELECT key, count(*) FROM {EXECUTIONS} GROUP BY key"))
    [(rescued,)] = server.query(f"SELECT coalesce(sum(rescues), 0) FROM {TASKS}")
    return {**tally(statuses, runs, keys), "rescued": int(rescued)}


def private_open(server: PrivatePostgres) -> int:
    [(count,)] = server.query(
        f"SELECT count(*) FROM {TASKS} WHERE status NOT IN ('success', 'error', 'cancel')"
    )
    return int(count)


def private_successes(server: PrivatePostgres) -> int:
    [(count,)] = server.query(f"SELECT count(*) FROM {TASKS} WHERE status = 'success'")
    return int(count)


def wait_for_progress(server: PrivatePostgres, more: int, message: str) -> None:
    reached = private_successes(server) + more
    wait_until(lambda: private_successes(server) >= reached, timeout=60, message=message)


UNREACHABLE = "Database unreachable ("
REACHABLE = "Database reachable again after "
REFUSED = "was no longer held by worker"  # storage/finish.py: a late result refused


def log_lines(path: Path, *levels: str) -> list[str]:
    """The worker log's record lines (``<date> <time> LEVEL logger: message``) of
    ``levels``; tracebacks and their continuation lines are not records."""
    found = []
    for line in log_text(path).splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in levels:
            found.append(line)
    return found


def outages_logged(path: Path) -> tuple[int, int]:
    """How many outages a worker's log reported, and how many recoveries."""
    lines = log_lines(path, "WARNING", "INFO")
    return (sum(UNREACHABLE in line for line in lines),
            sum(REACHABLE in line for line in lines))  # fmt: skip


@pytest.mark.postgres
def test_postgresql_restarted_mid_run_loses_no_plain_task(tmp_path):
    with private_site(tmp_path) as (server, site):
        keys = site.enqueue(1500, prefix="r")
        logs = [tmp_path / f"worker{n}.log" for n in range(2)]
        workers = [site.start_worker("--concurrency", "4", log=log) for log in logs]
        for restarts, mode in enumerate(("fast", "immediate"), start=1):
            wait_for_progress(server, 200, f"progress before the {mode} restart")
            server.restart(mode)
            # Each worker met the outage and is back: it says so once each way.
            wait_until(
                lambda n=restarts: all(outages_logged(log)[1] >= n for log in logs), timeout=60,
                message=f"the workers to log their recovery\n{log_text(logs[0])[-3000:]}",
            )  # fmt: skip
        wait_until(lambda: not private_open(server), timeout=180,
                   message=f"the drain\n{log_text(logs[0])[-3000:]}")  # fmt: skip
        result = private_numbers(server, keys)
        text = [log_text(log) for log in logs]
        loud = [log_lines(log, "WARNING", "ERROR", "CRITICAL") for log in logs]
        report("pg_restart", {**result, "restarts": 2,
                              "outage_lines": [outages_logged(log) for log in logs],
                              "warning_lines": sum(map(len, loud))})  # fmt: skip
        assert all(proc.poll() is None for proc in workers), text[0][-3000:]
        assert (result["success"], result["other"], result["unproven"]) == (len(keys), 0, 0), (
            result
        )
        # The outage, once per restart and worker: one WARNING naming the cause and one
        # INFO when the database answers again; nothing else louder than INFO (each
        # rescued run is an INFO line, each failed retry a DEBUG one) but the refusal of
        # a late result: a run cut by the restart was rescued while its thread went on,
        # and the copy that ran elsewhere holds the row (at-least-once).
        for log, lines in zip(logs, loud, strict=True):
            assert outages_logged(log) == (2, 2), lines
            other = [line for line in lines if UNREACHABLE not in line]
            assert sum(UNREACHABLE in line for line in lines) == 2, lines
            assert all(REFUSED in line for line in other), lines


@pytest.mark.postgres
def test_a_partitioned_worker_host_has_its_tasks_finished_elsewhere_and_late_results_refused(
    tmp_path,
):
    host = NetworkHost(1)
    host.create()
    try:
        partition(host, tmp_path)
    finally:
        host.remove()


def partition(host: NetworkHost, tmp_path: Path) -> None:
    beats = {"HEARTBEAT_INTERVAL": 0.5, "HEARTBEAT_TIMEOUT": 3.0, "RESCUE_INTERVAL": 0.5}
    with private_site(tmp_path, hosts=("127.0.0.1", host.host_address), settings=beats) as (
        server, site,
    ):  # fmt: skip
        # The far worker's first claim takes these two (the highest priority, one per
        # thread). There they run until the test lets them end, after the link is back:
        # longer than the partition, so that the far worker has a late result to store.
        held_keys = site.enqueue(2, prefix="held", task="tests.work_held", priority=10)
        keys = site.enqueue(200, prefix="p", seconds=0.05)
        release = tmp_path / "release"
        far_log, near_log = tmp_path / "far.log", tmp_path / "near.log"
        far = site.start_worker(
            "--concurrency", "2", "--queues", "default,far", log=far_log, prefix=host.prefix,
            database_url=server.url(host.host_address), env={"QTASKS_TEST_HOLD": str(release)},
        )  # fmt: skip
        far_id = wait_until(lambda: far_worker(server), timeout=60,
                            message=f"the far worker\n{log_text(far_log)}")  # fmt: skip
        held = wait_until(lambda: holding(server, far_id), timeout=60, message="far's tasks")
        assert sorted(key_of(server, uuid) for uuid in held) == held_keys
        site.start_worker("--concurrency", "2", "--queues", "default", log=near_log)
        host.cut()
        # Past HEARTBEAT_TIMEOUT the far worker counts as dead: its tasks are rescued
        # and run by the near one (through at once there), while the far one is still
        # cut off and its runs of them go on.
        wait_until(
            lambda: finished_elsewhere(server, held, far_id), timeout=90,
            message=f"the far worker's tasks to finish elsewhere\n{log_text(near_log)[-2000:]}",
        )  # fmt: skip
        assert far_worker(server) is None  # its heartbeat lapsed
        stored = rows_of(server, held)
        host.heal()
        # It rejoins (its heartbeat is back), then its runs end and it tries to store
        # their late results: refused, each with a WARNING.
        wait_until(
            lambda: far_worker(server), timeout=60,
            message=f"the far worker to beat again\n{log_text(far_log)[-3000:]}",
        )  # fmt: skip
        release.touch()
        wait_until(
            lambda: len(refusals(far_log)) >= len(held), timeout=60,
            message=f"the far worker to store its late results\n{log_text(far_log)[-3000:]}",
        )  # fmt: skip
        # And runs a task only it takes (queue "far").
        rejoin = site.enqueue(5, prefix="far", seconds=0.0, queue="far")
        wait_until(
            lambda: server.query(
                f"SELECT count(*) FROM {TASKS} WHERE args->>0 = ANY(%s) AND status = 'success'",
                [rejoin],
            )[0][0] == len(rejoin),
            timeout=60, message=f"the far worker to rejoin\n{log_text(far_log)[-3000:]}",
        )  # fmt: skip
        wait_until(lambda: not private_open(server), timeout=60, message="the drain")
        far_pid = int(far_id.split(":")[-2])
        # The refused results changed nothing: the rows are as the near worker left
        # them, its result (with its pid) included.
        after = rows_of(server, held)
        late = sum(1 for row in after.values() if row[3] == far_pid)
        [(held_runs,)] = server.query(
            f"SELECT count(*) FROM {EXECUTIONS} WHERE key = ANY(%s)", [held_keys]
        )
        result = private_numbers(server, keys)
        report("partition", {**result, "cut_off_tasks": len(held),
                             "late_results_refused": len(refusals(far_log)),
                             "late_results_stored": late, "held_runs": held_runs})  # fmt: skip
        assert after == stored
        assert late == 0
        assert sorted(line.split()[5] for line in refusals(far_log)) == sorted(held)
        assert held_runs == 2 * len(held)  # both runs of each had their side effect
        assert far.poll() is None
        assert (result["success"], result["other"], result["unproven"]) == (len(keys), 0, 0), (
            result
        )


def refusals(log: Path) -> list[str]:
    """The worker log's lines refusing a late result (``Task <uuid> was no longer held
    by worker ...``)."""
    return [line for line in log_lines(log, "WARNING") if REFUSED in line]


def key_of(server: PrivatePostgres, uuid: str) -> str:
    [(key,)] = server.query(f"SELECT args->>0 FROM {TASKS} WHERE uuid = %s::uuid", [uuid])
    return str(key)


def rows_of(server: PrivatePostgres, uuids: list[str]) -> dict[str, tuple[Any, ...]]:
    """What a late result would overwrite: status, worker, finish time and the pid in
    the stored result, by task."""
    rows = server.query(
        f"SELECT uuid::text, status, worker_id, finished_at, (\"returning\"->>1)::int "
        f"FROM {TASKS} WHERE uuid = ANY(%s::uuid[])",
        [uuids],
    )
    return {uuid: tuple(rest) for uuid, *rest in rows}


def far_worker(server: PrivatePostgres) -> str | None:
    """The live far worker's id (the one that takes queue "far")."""
    rows = server.query(
        f"SELECT key, value FROM {CONFIG} WHERE name = 'workers' AND expires_at > now()"
    )
    return next((key for key, value in rows if "far" in (value.get("queues") or [])), None)


def holding(server: PrivatePostgres, worker_id: str) -> list[str]:
    rows = server.query(
        f"SELECT uuid::text FROM {TASKS} WHERE status = 'process' AND worker_id = %s", [worker_id]
    )
    return [uuid for (uuid,) in rows]


def finished_elsewhere(server: PrivatePostgres, uuids: list[str], worker_id: str) -> bool:
    [(count,)] = server.query(
        f"SELECT count(*) FROM {TASKS} WHERE uuid = ANY(%s::uuid[]) AND status = 'success' "
        "AND worker_id <> %s",
        [uuids, worker_id],
    )
    return int(count) == len(uuids)
