"""Concurrency limits, as the claim enforces them: the lock a group's check takes.

The group and the limit are stored on each row when the task is enqueued (the API
works them out: ``django_qtasks.api.concurrency``), so any worker enforces them without
the task registry. The claim and its check are in
:meth:`django_qtasks.storage.DjangoStorage.claim`, with the rest of the queue's SQL;
this module is the number a PostgreSQL advisory lock (or a MariaDB named lock) is taken on.
"""

from __future__ import annotations

import hashlib

# The first half of the two-number advisory lock: the second is a group's hash. A
# two-number lock never collides with an application's one-number (bigint) locks.
LOCK_CLASS = 0x71745143  # "qtQC"


def lock_key(task_name: str, concurrency_key: str) -> int:
    """The second number of the group's advisory lock (a signed 32-bit hash). Two groups
    that share it only wait for each other's checks: never a wrong count."""
    digest = hashlib.blake2b(f"{task_name}\x00{concurrency_key}".encode(), digest_size=4)
    return int.from_bytes(digest.digest(), "big", signed=True)
