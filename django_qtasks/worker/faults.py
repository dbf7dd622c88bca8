"""Keeping a worker's loops alive through errors that are not the database's.

The claim loop, the completer, the heartbeat and the scheduler each run on a thread
the worker cannot do without. A database error is :mod:`.dbretry`'s to ride out; any
other error (a bug of ours, a plugged-in component's, a hook's) fails one round of
the loop, which carries on after a short pause that doubles with each failure in a
row (:data:`FIRST_DELAY` to :data:`MAX_DELAY` seconds).

Such an error is logged once per streak, as an outage is: the first failure of a
loop is an ERROR with its traceback, the same failure again (the same exception type
raised at the same place) is DEBUG, another one is an ERROR again, and the first
round that succeeds after them is one INFO saying how many failed.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

from django_qtasks.exceptions import describe_exception

FIRST_DELAY = 0.1  # seconds after the first failed round
MAX_DELAY = 5.0

_Where = tuple[type, str, int]


class FailureStreak:
    """The failed rounds in a row of one loop (on one thread: not shared)."""

    def __init__(self, what: str, logger: logging.Logger, *, action: str) -> None:
        self.what = what  # "The claim loop": the subject of the log lines
        self.logger = logger
        self.action = action
        self.failures = 0
        self._last: _Where | None = None

    @property
    def delay(self) -> float:
        """Seconds to wait before the next round (0 while nothing failed)."""
        if not self.failures:
            return 0.0
        return min(MAX_DELAY, FIRST_DELAY * 2.0 ** (self.failures - 1))

    def failed(self, **fields: Any) -> float:
        """Count a failed round, in its ``except`` block, and log it (see the module
        docstring); returns the seconds to wait before the next one."""
        exc = sys.exc_info()[1]
        assert exc is not None, "FailureStreak.failed() outside an except block"
        self.failures += 1
        where = _where(exc)
        level = logging.DEBUG if where == self._last else logging.ERROR
        self._last = where
        error = describe_exception(exc)
        message = error["message"].strip().split("\n", 1)[0]
        cause = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        self.logger.log(
            level,
            "%s failed (%s); trying again in %.1f s",
            self.what,
            cause,
            self.delay,
            exc_info=True,
            extra={"action": self.action, "error": error, "count": self.failures, **fields},
        )
        return self.delay

    def succeeded(self) -> None:
        """A round went through: the end of a streak, if one was on (cheap otherwise)."""
        if not self.failures:
            return
        failures, self.failures, self._last = self.failures, 0, None
        self.logger.info(
            "%s works again after %d failed round(s)",
            self.what,
            failures,
            extra={"action": f"{self.action}_recovered", "count": failures},
        )


def _where(exc: BaseException) -> _Where:
    """The exception's type and the line that raised it: what makes a failure "the
    same" as the last one (messages may hold ids that change every time)."""
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    return (type(exc), last.filename if last else "", (last.lineno or 0) if last else 0)
