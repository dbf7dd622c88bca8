"""Forgetting ``django_qtasks`` in INSTALLED_APPS gets a clear ImproperlyConfigured."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

import django_qtasks


@pytest.fixture
def unbuilt_app() -> Iterator[None]:
    """The project's app as before its first use, restored afterwards."""
    saved = dict(django_qtasks._project_apps)
    django_qtasks._project_apps.clear()
    try:
        yield
    finally:
        django_qtasks._project_apps.clear()
        django_qtasks._project_apps.update(saved)


def test_app_without_the_installed_app_names_the_fix(unbuilt_app: None) -> None:
    others = [name for name in settings.INSTALLED_APPS if name != "django_qtasks"]
    with override_settings(INSTALLED_APPS=others), pytest.raises(ImproperlyConfigured) as exc:
        django_qtasks.app.task(lambda: None)
    assert "'django_qtasks' is not in INSTALLED_APPS" in str(exc.value)
    assert "migrate" in str(exc.value)


def test_app_with_the_installed_app_builds(unbuilt_app: None) -> None:
    assert django_qtasks.app is django_qtasks.app
