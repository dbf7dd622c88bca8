"""The pytest plugin from the outside: pytest runs in a subprocess on projects that are
not this suite, with only the installed package (its ``pytest11`` entry point).

- a minimal project written here, in a temporary directory;
- the example project's own tests (``example_project/demo/tests.py``);
- a run without pytest-django, where the fixtures must say what is missing.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SETTINGS = """
SECRET_KEY = "tiny"
USE_TZ = True
INSTALLED_APPS = ["django_qtasks", "shop"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
QTASKS = {"DEFAULT_RETRY_BACKOFF": 30}
"""

TASKS = """
from django_qtasks import app

@app.task(priority=5, queue="mail")
def send_receipt(order_id: int) -> str:
    return f"receipt {order_id}"

@app.task(retry=2, echo=True)
def charge(self, order_id: int) -> int:
    if self.ctx.attempt < 3:
        raise ConnectionError("the bank is slow")
    return order_id
"""

TESTS = """
import pytest
from django.db import transaction
from shop.tasks import charge, send_receipt

def test_enqueued(qtasks_enqueued):
    send_receipt.add_task(7)
    qtasks_enqueued.assert_enqueued(send_receipt, args=[7], queue="mail", priority=5)
    with pytest.raises(AssertionError, match=r"Enqueued \\(1\\):\\n  shop.tasks.send_receipt"):
        qtasks_enqueued.assert_enqueued(charge)

def test_drain(qtasks_run_pending):
    charge.add_task(1)
    send_receipt.add_task(1)
    done = qtasks_run_pending()
    assert [(t.task_name, t.status, t.attempt) for t in done] == [
        ("shop.tasks.send_receipt", "success", 1), ("shop.tasks.charge", "success", 3)]

def test_immediate(qtasks_immediate):
    assert charge.add_task(2).returning == 2
    with transaction.atomic():
        task = send_receipt.add_task(2)
    assert task.status == "new"

@pytest.mark.django_db(transaction=True)
def test_immediate_on_commit(qtasks_immediate, qtasks_enqueued):
    with transaction.atomic():
        send_receipt.add_task(3)
    qtasks_enqueued.assert_enqueued(send_receipt, args=[3], status="success")
"""


def run_pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in a fresh process: no settings, database or path of this suite leak in."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "PYTHONPATH", "PYTEST_ADDOPTS"}
        and not key.startswith("QTASKS_")
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_the_fixtures_work_in_a_minimal_project(tmp_path: Path) -> None:
    write(tmp_path / "pytest.ini", "[pytest]\nDJANGO_SETTINGS_MODULE = settings\n")
    write(tmp_path / "settings.py", SETTINGS)
    write(tmp_path / "shop" / "__init__.py", "")
    write(tmp_path / "shop" / "tasks.py", TASKS)
    write(tmp_path / "test_shop.py", TESTS)
    result = run_pytest(tmp_path, "-W", "error")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pytest.ini",
        "settings.py",
        "shop",
        "test_shop.py",
    ], "the sub-run leaves nothing behind (its test database is in memory)"


def test_without_pytest_django_the_fixtures_say_what_is_missing(tmp_path: Path) -> None:
    write(tmp_path / "pytest.ini", "[pytest]\n")
    write(tmp_path / "test_plain.py", "def test_it(qtasks_enqueued):\n    pass\n")
    result = run_pytest(tmp_path, "-p", "no:django")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "The qtasks_enqueued fixture of django-qtasks needs pytest-django" in result.stdout


def test_the_example_projects_own_tests_pass() -> None:
    result = run_pytest(ROOT, "example_project/demo/tests.py", "--ds", "example_project.settings")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10 passed" in result.stdout


def test_the_docs_show_the_example_projects_tests_as_they_are() -> None:
    """Every test in the Examples of docs/testing.md is in example_project/demo/tests.py,
    word for word, so the docs show code that runs."""
    source = (ROOT / "example_project" / "demo" / "tests.py").read_text()
    docs = (ROOT / "docs" / "testing.md").read_text()
    examples = docs.split("## Examples", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", examples, flags=re.DOTALL)
    shown = []
    for block in blocks:
        for node in ast.parse(block).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                text = "\n".join(block.splitlines()[first - 1 : node.end_lineno])
                assert text in source, f"docs/testing.md shows {node.name} unlike the example"
                shown.append(node.name)
    assert len(shown) == 5
