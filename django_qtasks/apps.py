from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules
from django.utils.translation import gettext_lazy as _


class QTasksConfig(AppConfig):
    name = "django_qtasks"
    label = "django_qtasks"
    verbose_name = _("Task queue")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_qtasks import checks  # noqa: F401 - registers the system checks
        from django_qtasks.settings import get_settings

        get_settings()  # a wrong QTASKS fails at start-up, naming the key
        try:
            from django_qtasks.contrib.backends import install
        except ImportError as exc:  # Django 5.2 without the django-tasks backport
            if exc.name != "django_tasks":
                raise
        else:
            install()  # workers run rows enqueued through django.tasks
        autodiscover_modules("tasks")
