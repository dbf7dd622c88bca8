"""Django signals sent by django-qtasks.

``task_enqueued``: after a task row is written (inside the caller's transaction).
``task_started``: in the worker, just before the function runs.
``task_finished``: in the worker, after the result is stored.
``component_started`` / ``component_stopped``: a component of the worker process
(``worker``, ``broker``, ``storage``, ``global_config``, ``starter``) started or stopped.
"""

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger("django_qtasks.signals")

# The task signals go out for every task, from the worker's hot path: they keep their
# receivers per sender (Django's model signals do the same), instead of working the
# list out again on each send. A sender must then be a class, as ours always are.
task_enqueued = Signal(use_caching=True)  # kwargs: task (Task snapshot)
task_started = Signal(use_caching=True)  # kwargs: task (Task snapshot)
task_finished = Signal(use_caching=True)  # kwargs: task (Task snapshot), outcome (Outcome)
component_started = Signal()  # kwargs: component (object), name (str)
component_stopped = Signal()  # kwargs: component (object), name (str)


def send_from_worker(signal: Signal, sender: Any, **kwargs: Any) -> None:
    """Send a signal from the worker's own threads, where a receiver that raises must
    not stop a task from being stored (or the completer from storing the next ones):
    errors are logged, not raised."""
    for receiver, result in signal.send_robust(sender=sender, **kwargs):
        if isinstance(result, Exception):
            logger.error(
                "Signal receiver %r failed",
                receiver,
                exc_info=(type(result), result, result.__traceback__),
                extra={"action": "signal_failed"},
            )
