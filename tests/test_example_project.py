"""``make run`` end to end: the script starts the site and a worker, a view enqueues a
task, the worker runs it, and one signal stops both.

The example works on a temporary SQLite file of its own, not on pytest-django's test
database: the script migrates and serves it in other processes, as a fresh checkout
would. So nothing here touches the ``db`` fixture, whatever ``DATABASE_URL`` says.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "run-example.sh"
CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
QUEUED_RE = re.compile(r"Queued add_numbers as task ([0-9a-f-]{36})")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    """A zombie counts as gone: it has exited, only its parent has not read the status."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in {"Z", "X"}


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Browser:
    """Just enough of a browser for Django forms: cookies, CSRF tokens, redirects."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        # No proxies: an http_proxy in the environment must not intercept 127.0.0.1.
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
        )

    def get(self, path: str) -> tuple[str, str]:
        """The final URL (after redirects) and the body."""
        with self.opener.open(self.base_url + path, timeout=5) as response:
            return response.geturl(), response.read().decode()

    def submit(self, form_page: str, action: str, fields: dict[str, Any]) -> tuple[str, str]:
        """Post a form the way a browser would: with the token from the page it is on."""
        _, page = self.get(form_page)
        token = CSRF_RE.search(page)
        assert token, f"no CSRF token on {form_page}"
        data = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": token.group(1)}).encode()
        with self.opener.open(self.base_url + action, data=data, timeout=5) as response:
            return response.geturl(), response.read().decode()


@dataclass
class ExampleSite:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def pids(self) -> tuple[int, int] | None:
        """The worker's and the server's pids, once the script has printed them."""
        found = re.search(r"Worker:\s+pid (\d+), server: pid (\d+)", self.output())
        return (int(found.group(1)), int(found.group(2))) if found else None

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"run-example.sh exited with {self.proc.returncode}:\n{self.output()}")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture
def example_site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExampleSite]:
    """``scripts/run-example.sh`` on a temp database, in a process group of its own.

    With ``request.param == "ignored"`` the script starts with SIGINT ignored, as every
    background job of a non-interactive shell does (``make test &``, a CI step)."""
    sigint = getattr(request, "param", "default")
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "PORT": str(_free_port()),
        "PYTHON": sys.executable,
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT, env=env, check=True, timeout=60,
    )
    log = tmp_path / "run-example.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(SCRIPT)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_ignore_sigint if sigint == "ignored" else None,
        )
    site = ExampleSite(proc=proc, port=int(env["PORT"]), log=log)
    try:
        yield site
    finally:
        # Whatever the test did, leave no process behind (the worker has its own group).
        pids = site.pids() or ()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _wait_for_start(site: ExampleSite) -> tuple[int, int]:
    """Wait until the site answers; return the worker's and the server's pids."""

    def page_answers() -> bool:
        site.check_running()
        return _accepts_connections(site.port)

    wait_until(page_answers, timeout=30, interval=0.05, message="the example site to answer")
    # The banner's last line: the script may still be printing it when the site answers.
    wait_until(lambda: "  Stop:" in site.output(), timeout=10, message="the whole banner")
    return wait_until(site.pids, timeout=10, message="the pids in the banner")


def _stop_and_check(site: ExampleSite, signum: signal.Signals, pids: tuple[int, int]) -> None:
    """One signal to the group, as a terminal's Ctrl-C (INT) or a supervisor (TERM) sends:
    the script must stop the server and the worker, gracefully, and exit cleanly."""
    worker_pid, server_pid = pids
    os.killpg(site.proc.pid, signum)
    assert site.proc.wait(timeout=20) == 0, site.output()
    assert not _alive(server_pid), "the development server is still running"
    assert not _alive(worker_pid), "the worker is still running"
    assert not _accepts_connections(site.port)
    output = site.output()
    assert "Stopped the example site and its worker." in output
    assert "stopped (forced)" not in output, "one signal must stop the worker gracefully"


def test_make_run_serves_the_demo_and_runs_its_tasks(example_site: ExampleSite) -> None:
    site = example_site
    pids = _wait_for_start(site)
    banner = site.output()
    assert f"{site.url}/admin/" in banner
    assert "admin / password: admin" in banner
    assert "Ctrl-C" in banner

    browser = Browser(site.url)
    url, page = browser.submit("/", "/start/add/", {"a": 20, "b": 22})
    assert url == f"{site.url}/", "the view redirects back to the page"
    queued = QUEUED_RE.search(page)
    assert queued, page
    uuid = queued.group(1)

    def feed() -> dict[str, Any]:
        site.check_running()
        with browser.opener.open(f"{site.url}/tasks.json", timeout=5) as response:
            return dict(json.load(response))

    def finished_row(uuid: str) -> dict[str, Any] | None:
        row = next((row for row in feed()["tasks"] if row["uuid"] == uuid), None)
        return row if row and row["status"] in {"success", "error", "cancel"} else None

    row = wait_until(lambda: finished_row(uuid), timeout=15, interval=0.1,
                     message="the task to finish")
    assert row["status"] == "success", row
    assert row["result"] == "42"
    assert row["call"] == "add_numbers(20, 22)"
    assert row["attempt"] == 1
    assert feed()["workers"] == 1, "the page sees the worker's heartbeat"

    # A delayed task waits in the queue, and the row's Cancel button stops it for good.
    _, page = browser.submit("/", "/start/add/", {"a": 1, "b": 2, "delay": 5})
    queued = QUEUED_RE.search(page)
    assert queued, page
    delayed = next(row for row in feed()["tasks"] if row["uuid"] == queued.group(1))
    assert delayed["status"] == "new"
    assert delayed["cancellable"]
    browser.submit("/", delayed["cancel_url"], {})
    row = wait_until(lambda: finished_row(delayed["uuid"]), timeout=5, message="the cancel")
    assert row["status"] == "cancel", row

    # The login the banner promises works, and the admin lists the task.
    _, login_page = browser.get("/admin/login/")
    assert "csrfmiddlewaretoken" in login_page
    url, _ = browser.submit("/admin/login/", "/admin/login/?next=/admin/",
                            {"username": "admin", "password": "admin", "next": "/admin/"})
    assert url == f"{site.url}/admin/", "admin/admin should log in"
    url, changelist = browser.get("/admin/django_qtasks/taskrecord/")
    assert url.endswith("/admin/django_qtasks/taskrecord/")
    assert "add_numbers" in changelist

    _stop_and_check(site, signal.SIGTERM, pids)


@pytest.mark.parametrize("example_site", ["default", "ignored"], indirect=True)
def test_ctrl_c_stops_the_site_and_the_worker(example_site: ExampleSite) -> None:
    """The server runs as a background job, which ignores SIGINT: the script forwards it.
    It works however the script was started, also with SIGINT ignored by its parent
    (the script restores the default before it traps the signal)."""
    pids = _wait_for_start(example_site)
    _, page = Browser(example_site.url).get("/")
    assert "django-qtasks demo" in page
    _stop_and_check(example_site, signal.SIGINT, pids)
