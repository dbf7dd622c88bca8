"""Structured logs: a worker's records about a task carry its fields, and the JSON
formatter writes them one object per line."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import uuid as uuid_lib

import pytest
from django.utils import timezone

from django_qtasks.log import JSONFormatter
from django_qtasks.models import TaskRecord
from tests.testapp.tasks import add, always_fail

TASK_FIELDS = {"task_uuid", "task_name", "queue", "attempt"}


def test_the_formatter_writes_one_json_object_per_line():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("tests.jsonlog")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            logger.error(
                "Task %s failed", "t1", exc_info=True,
                extra={"task_uuid": "u1", "attempt": 2, "when": timezone.now(), "obj": object()},
            )  # fmt: skip
        logger.warning("plain")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "Task t1 failed"
    assert (first["level"], first["logger"]) == ("ERROR", "tests.jsonlog")
    assert first["time"].endswith("+00:00")
    assert first["exception"].startswith("Traceback")
    assert "ValueError: bad" in first["exception"]
    assert (first["task_uuid"], first["attempt"]) == ("u1", 2)
    assert first["obj"].startswith("<object object")  # not JSON: written as its str()
    assert "args" not in first
    assert "msg" not in first
    assert set(second) == {"time", "level", "logger", "message"}


def test_the_formatter_plugs_into_a_logging_dict_config(capsys):
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": "django_qtasks.log.JSONFormatter"}},
            "handlers": {
                "out": {
                    "class": "logging.StreamHandler",
                    "stream": "ext://sys.stdout",
                    "formatter": "json",
                }
            },
            "loggers": {"tests.dictconfig": {"handlers": ["out"], "propagate": False}},
        }
    )
    logger = logging.getLogger("tests.dictconfig")
    try:
        logger.warning("hello %s", "world", extra={"queue": "mail"})
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    line = json.loads(capsys.readouterr().out)
    assert (line["message"], line["queue"]) == ("hello world", "mail")


@pytest.mark.django_db(transaction=True)
def test_a_workers_records_about_tasks_carry_the_task_fields(run_worker, caplog):
    caplog.set_level(logging.INFO, logger="django_qtasks")
    ok = add.add_task(1, 2)
    failing = always_fail.add_task("x")  # retry=1: a retry, then an error
    now = timezone.now()
    unknown = TaskRecord.objects.create(
        uuid=uuid_lib.uuid4(), task_name="nowhere.gone", queue="default", run_after=now,
        created_at=now, updated_at=now,
    )  # fmt: skip

    assert run_worker() == 0

    about = [r for r in caplog.records if getattr(r, "task_uuid", None)]
    for record in about:
        assert record.name.startswith("django_qtasks."), record.name
        assert set(vars(record)) >= TASK_FIELDS, (record.getMessage(), vars(record))
    finished = {
        (r.task_uuid, r.attempt): r for r in about if getattr(r, "action", "") == "task_finished"
    }
    success = finished[str(ok.uuid), 1]
    assert (success.levelno, success.status) == (logging.INFO, "success")
    assert success.task_name == add.name
    assert success.queue == "default"
    assert success.duration >= 0
    assert success.getMessage() == f"Task {add.name} {ok.uuid}: success in {success.duration:.3f} s"
    retried = finished[str(failing.uuid), 1]
    assert retried.status == "retry"
    # The text line says which attempt failed, why, and when the next one is due.
    assert retried.getMessage() == (
        f"Task {always_fail.name} {failing.uuid}: attempt 1 of 2 failed after "
        f"{retried.duration:.3f} s (RuntimeError: boom x); next try in 0.0 s"
    )
    failed = finished[str(failing.uuid), 2]
    assert (failed.levelno, failed.status) == (logging.WARNING, "error")
    assert failed.error["message"] == "boom x"
    assert failed.getMessage().endswith(
        f"attempt 2 of 2 failed after {failed.duration:.3f} s (RuntimeError: boom x); "
        "it ends in error"
    )
    gone = next(r for r in about if getattr(r, "action", "") == "unknown_task")
    assert (gone.task_uuid, gone.task_name, gone.attempt) == (str(unknown.uuid), "nowhere.gone", 1)
