"""A module outside every installed app, with a side effect on import: a worker must
never import it because a task row names it."""

import os

os.environ["QTASKS_UNTRUSTED_IMPORTED"] = "1"


def run(key: str) -> None:
    raise AssertionError(f"untrusted code ran ({key})")
