"""``QTASKS["LISTEN_NOTIFY"]``: True, False or "auto", and what "auto" decides.

The worker behind a real PgBouncer is in tests/pgbouncer; here, the decision alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from django_qtasks.settings import build_settings
from django_qtasks.storage.cursors import session_state_wanted


@pytest.mark.parametrize("value", [True, False, "auto"])
def test_true_false_and_auto_are_accepted(value: bool | str) -> None:
    assert build_settings({"LISTEN_NOTIFY": value}).listen_notify == value


def test_auto_is_the_default() -> None:
    assert build_settings({}).listen_notify == "auto"


@pytest.mark.parametrize("value", ["yes", "AUTO", 1, 0, None, ["auto"]])
def test_anything_else_is_refused_naming_the_key(value: object) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"'LISTEN_NOTIFY'.*True, False or 'auto'"):
        build_settings({"LISTEN_NOTIFY": value})


@pytest.fixture
def pooled_alias() -> Iterator[str]:
    """The default alias, marked as behind a transaction pooler for the test."""
    settings = connection.settings_dict
    before = settings.get("DISABLE_SERVER_SIDE_CURSORS", False)
    settings["DISABLE_SERVER_SIDE_CURSORS"] = True
    try:
        yield connection.alias
    finally:
        settings["DISABLE_SERVER_SIDE_CURSORS"] = before


def test_auto_listens_on_postgresql_unless_a_pooler_is_declared(pooled_alias: str) -> None:
    postgres = connection.vendor == "postgresql"
    assert session_state_wanted("auto", pooled_alias) is False
    assert session_state_wanted(True, pooled_alias) is postgres  # explicit: the user knows best
    assert session_state_wanted(False, pooled_alias) is False
    connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] = False
    assert session_state_wanted("auto", pooled_alias) is postgres
