"""Bad values that used to crash a worker or slip through validation."""

from __future__ import annotations

import math

import pytest

from django_qtasks.exceptions import ConfigurationError, describe_exception
from django_qtasks.settings import build_settings
from tests.testapp.tasks import StrRaises, StrRaisesItself


# The worst case is StrRaisesItself: describing it again (the old fallback) raised again.
@pytest.mark.parametrize("cls", [StrRaises, StrRaisesItself])
def test_describe_exception_survives_a_raising_str(cls: type[Exception]) -> None:
    described = describe_exception(cls())
    assert described["type"].endswith(cls.__qualname__)
    assert "str() failed" in described["message"]


@pytest.mark.parametrize(
    "key",
    ["HEARTBEAT_TIMEOUT", "POLL_INTERVAL", "GRACE", "DEFAULT_RETRY_BACKOFF", "RETRY_BACKOFF_MAX",
     "DEFAULT_MAX_TIME", "RESULT_POLL_INTERVAL", "RESCUE_INTERVAL", "PRUNE_AFTER"],
)  # fmt: skip
@pytest.mark.parametrize("value", [math.nan, math.inf, 1e300])
def test_non_finite_seconds_are_refused_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=key):
        build_settings({key: value})


@pytest.mark.parametrize("queue", ["default\n", "a\nb", ""])
def test_a_queue_name_with_a_newline_is_refused(queue: str) -> None:
    from django_qtasks.api.task import validate_queue
    from django_qtasks.exceptions import InvalidTaskCall

    with pytest.raises(InvalidTaskCall, match="queue"):
        validate_queue(queue, None)
    with pytest.raises(ConfigurationError, match="DEFAULT_QUEUE"):
        build_settings({"DEFAULT_QUEUE": queue})


@pytest.mark.parametrize("key", ["DEFAULT_RETRY", "CONCURRENCY"])
def test_counts_past_the_column_range_are_refused(key: str) -> None:
    with pytest.raises(ConfigurationError, match=key):
        build_settings({key: 2**40})


def test_a_metrics_token_that_is_not_ascii_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="METRICS_TOKEN"):
        build_settings({"METRICS_TOKEN": "s\u00e9cret"})


@pytest.mark.parametrize(
    ("command", "argv", "option"),
    [
        ("qtasks_worker", ["--queues", ""], "--queues"),
        ("qtasks_worker", ["--queues", " , "], "--queues"),
        ("qtasks_worker", ["--poll-interval", "nan"], "--poll-interval"),
        ("qtasks_worker", ["--grace", "nan"], "--grace"),
        ("qtasks_worker", ["--grace", "inf"], "--grace"),
        ("qtasks_status", ["--window", "nan"], "--window"),
        ("qtasks_status", ["--max-age", "nan"], "--max-age"),
    ],
)
def test_management_command_options_refuse_nan_and_empty(
    command: str, argv: list[str], option: str
) -> None:
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match=option):
        call_command(command, *argv)


@pytest.mark.parametrize("age", ["1000000d", "1e20d", "99999999999w"])
def test_prune_refuses_an_age_before_year_one(age: str) -> None:
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--older-than"):
        call_command("qtasks_prune", "--older-than", age)


@pytest.mark.parametrize("key", ["MIDDLEWARES_BEFORE", "MIDDLEWARES_AFTER"])
def test_check_names_a_middleware_path_that_does_not_import(key: str) -> None:
    from django.test import override_settings

    from django_qtasks.checks import check_qtasks_middlewares

    with override_settings(QTASKS={key: ["no_such_module.Middleware"]}):
        errors = check_qtasks_middlewares()
    assert [e.id for e in errors] == ["django_qtasks.E006"]
    assert key in errors[0].msg
    assert "no_such_module.Middleware" in errors[0].msg
