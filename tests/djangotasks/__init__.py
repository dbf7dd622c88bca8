"""The django.tasks backend, tested through Django's public Tasks API."""

import pytest
from django.conf import settings


def skip_without_framework() -> None:
    """Skip the calling test module on Django 5.2 without the django-tasks backport."""
    if settings.TASKS_FRAMEWORK is None:
        pytest.skip(
            "Django < 6.0 and the django-tasks backport is not installed "
            '(pip install "django-qtasks[tasks]")',
            allow_module_level=True,
        )
