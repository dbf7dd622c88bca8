"""The monitoring keys of QTASKS: HEARTBEAT_FILE and METRICS_TOKEN."""

from __future__ import annotations

import pytest

from django_qtasks.exceptions import ConfigurationError
from django_qtasks.settings import build_settings


@pytest.mark.parametrize("key", ["HEARTBEAT_FILE", "METRICS_TOKEN"])
def test_a_string_or_none(key: str) -> None:
    assert getattr(build_settings({key: "x"}), key.lower()) == "x"
    assert getattr(build_settings({key: None}), key.lower()) is None
    assert getattr(build_settings({}), key.lower()) is None
    for bad in ("", 1, ["x"]):
        with pytest.raises(ConfigurationError, match=rf"QTASKS\['{key}'\] must be None or a"):
            build_settings({key: bad})
