"""Where the fault tests' ``FAULT <name>: ...`` lines go (``$QTASKS_FAULT_REPORT``): ``-``
or ``1`` is the terminal, at the end of pytest's output even where pytest captures the
tests' output (without ``-s``, and under pytest-xdist); any other value is a file the
lines are appended to. pytest runs in a subprocess, on a probe test outside the suite
that reports a line as a fault test does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
from tests.faultkit import report

def test_probe():
    report("probe", {"tasks": 2, "success": 2})
"""
LINE = "FAULT probe: tasks=2 success=2"
# The suite's conftest, loaded as the probe's own (once pytest-django has set Django up).
CONFTEST = "from tests.conftest import *  # noqa: F403\n"


def run_probe(tmp_path: Path, value: str, *options: str) -> str:
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": "",
        "QTASKS_FAULT_REPORT": value,
    }
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
         str(ROOT), "-p", "no:cacheprovider", *options,
         str(tmp_path / "test_probe.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("value", "options"),
    [("-", ("-p", "no:xdist")), ("1", ("-p", "no:xdist")), ("-", ("-n", "1"))],
    ids=["dash", "one", "dash-xdist"],
)
def test_a_dash_or_1_shows_the_lines_at_the_end_of_the_output(tmp_path, value, options):
    out = run_probe(tmp_path, value, *options)
    assert not (tmp_path / value).exists()  # no file named "1" (or "-")
    summary = out.split(" fault report ", 1)
    assert len(summary) == 2, out
    assert summary[1].splitlines().count(LINE) == 1, out


def test_another_value_is_a_file_the_lines_are_appended_to(tmp_path):
    lines = tmp_path / "faults.txt"
    lines.write_text("FAULT earlier: tasks=1\n")
    out = run_probe(tmp_path, str(lines), "-p", "no:xdist")
    assert lines.read_text() == f"FAULT earlier: tasks=1\n{LINE}\n"
    assert LINE not in out  # captured, as without the setting
