"""docs/quickstart.md, run as a new user would run it: every block, in order, in a fresh
``django-admin startproject``, with the Django of this virtualenv (6.x in ``.venv``,
5.2 LTS in ``.venv-lts``), ending with the output the page promises.

How a block is run:

- ``sh``: each line is a command. ``django-admin`` and ``python`` are this virtualenv's;
  ``python -m pip install django-qtasks`` is checked, not run (the package is installed
  here already); ``qtasks_worker`` starts in the background and runs until the end.
- ``python`` starting with ``# path``: the whole file. ``# path: add at the end``
  appends; ``(Django 5.2 and 6.0 only)`` runs only on those versions.
- ``pycon``: a doctest in ``python manage.py shell`` (``...`` matches anything).
- ``text`` right after an ``sh`` block: lines its output must contain, in order.

The project works on its own SQLite file, whatever ``DATABASE_URL`` says: the page
is about a new project, which has nothing else.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import django
import pytest

from tests.docs.markdown import Block, blocks
from tests.helpers import wait_until

PAGE = "quickstart.md"
ONLY = re.compile(r"\(Django ([\d. and]+) only\)")
STARTED = "django_qtasks.worker: Worker"
RUN_DOCTEST = """
import doctest, sys
text = open(sys.argv[1]).read()
test = doctest.DocTestParser().get_doctest(text, {}, "quickstart", sys.argv[1], 0)
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
runner.run(test)
print("DOCTEST", runner.summarize(verbose=False))
"""


def applies(header: str) -> bool:
    """False for a block marked ``(Django 5.2 and 6.0 only)`` on another version."""
    found = ONLY.search(header)
    if not found:
        return True
    versions = {v.strip() for v in found.group(1).split("and")}
    return f"{django.VERSION[0]}.{django.VERSION[1]}" in versions


def expected_lines(text: str) -> re.Pattern[str]:
    """The lines of a ``text`` block as one pattern, in order, ``...`` matching anything."""
    parts = [
        re.escape(line.strip()).replace(re.escape("..."), ".*")
        for line in text.splitlines()
        if line.strip() and line.strip() != "..."
    ]
    return re.compile(".*".join(parts), re.DOTALL)


class Project:
    """A fresh project directory and the processes the page starts in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        unset = {"DJANGO_SETTINGS_MODULE", "DATABASE_URL"}
        self.env = {k: v for k, v in os.environ.items() if k not in unset}
        self.env["PYTHONUNBUFFERED"] = "1"
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log = root / "worker.log"

    def argv(self, line: str, where: str) -> list[str]:
        words = shlex.split(line)
        if words[0] == "django-admin":
            return [sys.executable, "-m", "django", *words[1:]]
        assert words[0] == "python", f"{where}: unknown command {line!r}"
        return [sys.executable, *words[1:]]

    def run(self, line: str, where: str) -> str:
        done = subprocess.run(
            self.argv(line, where), cwd=self.root, env=self.env, capture_output=True,
            text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{where}: {line} failed:\n{output}"
        assert "WARNINGS:" not in output, f"{where}: {line} warned:\n{output}"
        return output

    def start_worker(self, line: str, where: str) -> None:
        with self.worker_log.open("wb") as log:
            self.worker = subprocess.Popen(
                self.argv(line, where), cwd=self.root, env=self.env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

        def started() -> bool:
            assert self.worker is not None
            assert self.worker.poll() is None, f"the worker exited:\n{self.worker_output()}"
            return STARTED in self.worker_output()

        wait_until(started, timeout=30, message="the worker's start-up line")

    def worker_output(self) -> str:
        return self.worker_log.read_text(errors="replace")

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.worker.pid, signal.SIGKILL)
                self.worker.wait(timeout=10)

    def shell_doctest(self, block: Block) -> None:
        session = self.root / f"session-{block.line}.txt"
        session.write_text(block.text)
        output = self._doctest(session, block)
        assert "failed=0" in output, f"{block.where}: the session differs:\n{output}"

    def _doctest(self, session: Path, block: Block) -> str:
        # manage.py shell -c takes no script arguments: the session's path goes in the code.
        code = RUN_DOCTEST.replace("sys.argv[1]", repr(str(session)))
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-v", "0", "-c", code], cwd=self.root,
            env=self.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{block.where}:\n{output}"
        assert "DOCTEST" in output, f"{block.where}:\n{output}"
        return output


def test_the_quickstart_runs_as_written(tmp_path: Path) -> None:
    project = Project(tmp_path)
    ran: list[str] = []
    last_output = ""
    try:
        for block in blocks(PAGE):
            first = block.text.splitlines()[0] if block.text.strip() else ""
            if block.lang == "sh":
                last_output = ""
                for line in block.text.splitlines():
                    line = line.split("  #", 1)[0].strip()
                    if not line:
                        continue
                    if line.startswith("python -m pip install"):
                        assert "django-qtasks" in line, f"{block.where}: {line}"
                    elif "qtasks_worker" in line:
                        project.start_worker(line, block.where)
                        last_output = "worker"
                    else:
                        last_output = project.run(line, block.where)
                    ran.append(line)
            elif block.lang == "text":
                assert last_output, f"{block.where}: a text block follows no command"
                pattern = expected_lines(block.text)

                def shows(pattern: re.Pattern[str] = pattern, seen: str = last_output) -> bool:
                    text = project.worker_output() if seen == "worker" else seen
                    return bool(pattern.search(text))

                if last_output == "worker":  # the worker prints as it goes
                    wait_until(shows, timeout=30, message=f"the output of {block.where}")
                assert shows(), f"{block.where}: not in the output:\n{last_output}"
            elif block.lang == "python":
                header = re.match(r"# ([\w./]+)(.*)", first)
                assert header, f"{block.where}: a python block must start with '# path'"
                path, rest = header.group(1), header.group(2)
                if not applies(rest):
                    continue
                target = tmp_path / path
                target.parent.mkdir(parents=True, exist_ok=True)
                if "add at the end" in rest:
                    with target.open("a") as out:
                        out.write("\n" + block.text)
                else:
                    target.write_text(block.text)
                ran.append(path)
            elif block.lang == "pycon":
                project.shell_doctest(block)
                ran.append(f"session at line {block.line}")
            else:
                pytest.fail(f"{block.where}: no rule runs a ```{block.lang} block")
        # What the page promises at its end, and nothing failed on the way.
        assert project.worker is not None, "the page never starts a worker"
        assert "Traceback" not in project.worker_output(), project.worker_output()
    finally:
        project.stop_worker()
    assert any("startproject" in line for line in ran)
    assert "shop/tasks.py" in ran

    # The newcomer's classic slip, on the same project: the app left out of
    # INSTALLED_APPS. The error says what to add, not "doesn't declare an app_label".
    with (tmp_path / "mysite" / "settings.py").open("a") as out:
        out.write('\nINSTALLED_APPS.remove("django_qtasks")\n')
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=tmp_path, env=project.env,
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0
    assert "'django_qtasks' is not in INSTALLED_APPS" in done.stderr, done.stderr
