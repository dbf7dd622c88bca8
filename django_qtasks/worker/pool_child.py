"""The entry point of a pool child process.

A spawned child unpickles its target by importing the target's module before
anything else runs, so this module imports nothing that needs Django's app registry:
it sets Django up first, then hands over to :func:`django_qtasks.pool.run_child`.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

# A SIGTERM can arrive while Django is still loading; it must not kill the child
# before it can hand anything back, so it is remembered and obeyed once running.
early_stop = threading.Event()


def _remember_stop(signum: int, frame: FrameType | None) -> None:
    early_stop.set()


def child_entry(spec: dict[str, Any], to_parent: Connection, from_parent: Connection) -> None:
    # Ctrl-C in a terminal reaches the whole process group; only the parent's SIGTERM
    # should stop a child, or one Ctrl-C would count as two signals here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _remember_stop)
    import django

    django.setup()
    from django_qtasks.worker.pool import run_child

    run_child(spec, to_parent, from_parent, early_stop)
