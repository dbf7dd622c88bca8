"""The package layout: one folder per component, and the flat layout's paths still import."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.utils.module_loading import import_string

from django_qtasks import _moved

PACKAGE = Path(__file__).resolve().parents[2] / "django_qtasks"
ROOT_MODULES = {
    "__init__", "_lazy", "_moved", "admin", "apps", "checks", "cron", "exceptions", "log",
    "models", "settings", "signals", "values",
}  # fmt: skip


def test_the_root_holds_only_django_conventions_and_shared_modules() -> None:
    flat = {p.stem for p in PACKAGE.glob("*.py")}
    assert flat == ROOT_MODULES, "a new module belongs in a component's folder"


@pytest.mark.parametrize(("old", "new"), sorted(_moved.MOVED.items()))
def test_an_old_path_is_the_module_that_holds_the_code_now(old: str, new: str) -> None:
    module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__spec__ is not None
    assert module.__spec__.name == new  # one identity, whatever name imported it first


def test_settings_may_name_classes_by_old_and_package_paths() -> None:
    backend = import_string("django_qtasks.contrib.backends.QTasksBackend")
    assert import_string("django_qtasks.backends.QTasksBackend") is backend
    storage = import_string("django_qtasks.storage.storage.DjangoStorage")
    assert import_string("django_qtasks.storage.DjangoStorage") is storage
    assert import_string("django_qtasks.worker.ThreadWorker").__module__ == (
        "django_qtasks.worker.worker"
    )


def test_a_package_says_which_names_it_lacks() -> None:
    storage = importlib.import_module("django_qtasks.storage")
    with pytest.raises(AttributeError, match=r"django_qtasks\.storage.*no_such_name"):
        storage.no_such_name  # noqa: B018


def test_an_old_path_imported_first_in_a_fresh_process() -> None:
    """Before anything else imported the new module (what a user's settings do)."""
    code = (
        "import django; django.setup();"
        "import django_qtasks.executor as old, django_qtasks.worker.executor as new, sys;"
        "assert old is new and sys.modules['django_qtasks.executor'] is new;"
        "assert new.__spec__.name == 'django_qtasks.worker.executor'"
    )
    env = {**os.environ, "DATABASE_URL": "", "DJANGO_SETTINGS_MODULE": "tests.settings"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=PACKAGE.parent)


@pytest.mark.django_db
def test_the_brokers_old_forwards_warn_and_reach_its_storage() -> None:
    """The Broker no longer restates Storage's methods; the old names answer for one
    release, warning, and nothing else is forwarded."""
    from django_qtasks import app
    from django_qtasks.broker.broker import DEPRECATED_FORWARDS

    task = app.add_task("tests.record", "x")
    with pytest.warns(DeprecationWarning, match=r"call broker\.storage\.get\(\) instead"):
        found = app.broker.get(task.uuid)  # type: ignore[attr-defined]
    assert found is not None
    assert found.uuid == task.uuid
    for name in DEPRECATED_FORWARDS:
        assert callable(getattr(app.broker.storage, name)), name
    with pytest.raises(AttributeError, match="no attribute 'set_progres'"):
        app.broker.set_progres  # type: ignore[attr-defined]  # noqa: B018
