"""How a worker loop's failures are logged: once per streak, again when they change."""

from __future__ import annotations

import logging

import pytest

from django_qtasks.worker.faults import MAX_DELAY, FailureStreak

logger = logging.getLogger("tests.streak")


def fail_here(streak: FailureStreak) -> float:
    try:
        raise RuntimeError("one place")
    except RuntimeError:
        return streak.failed()


def fail_there(streak: FailureStreak) -> float:
    try:
        raise RuntimeError("another place")
    except RuntimeError:
        return streak.failed()


def test_a_streak_is_one_error_until_the_failure_changes(caplog: pytest.LogCaptureFixture) -> None:
    streak = FailureStreak("The loop", logger, action="loop_failed")
    caplog.set_level(logging.DEBUG, logger="tests.streak")
    delays = [fail_here(streak) for _ in range(3)] + [fail_there(streak)]
    streak.succeeded()
    streak.succeeded()  # nothing more to say
    fail_here(streak)  # a new streak

    levels = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert levels == [
        ("ERROR", "The loop failed (RuntimeError: one place); trying again in 0.1 s"),
        ("DEBUG", "The loop failed (RuntimeError: one place); trying again in 0.2 s"),
        ("DEBUG", "The loop failed (RuntimeError: one place); trying again in 0.4 s"),
        ("ERROR", "The loop failed (RuntimeError: another place); trying again in 0.8 s"),
        ("INFO", "The loop works again after 4 failed round(s)"),
        ("ERROR", "The loop failed (RuntimeError: one place); trying again in 0.1 s"),
    ]
    assert all(record.exc_info for record in caplog.records if record.levelname != "INFO")
    assert delays == [0.1, 0.2, 0.4, 0.8]


def test_the_pause_is_capped() -> None:
    streak = FailureStreak("The loop", logger, action="loop_failed")
    assert max(fail_here(streak) for _ in range(20)) == MAX_DELAY
