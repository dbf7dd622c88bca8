"""Settings for the test suite: SQLite by default, PostgreSQL or MariaDB/MySQL when
DATABASE_URL says so (``postgres://...`` or ``mysql://...``)."""

from __future__ import annotations

import json
import os
from importlib.util import find_spec
from pathlib import Path

import django
import environ

BASE_DIR = Path(__file__).resolve().parent
env = environ.Env()

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"

_db_url = env.str("DATABASE_URL", default="")
if _db_url:
    DATABASES = {"default": env.db_url_config(_db_url)}
    # One test database per run, so that concurrent runs on one server never collide.
    DATABASES["default"]["TEST"] = {"NAME": f"test_qtasks_{os.getpid()}"}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
        # As docs/databases.md asks: utf8mb4 (all of Unicode, emoji included), and READ
        # COMMITTED, so that a statement sees what others committed before it started
        # and takes no gap locks. The test database gets the server's default collation,
        # as a user's database would.
        DATABASES["default"].setdefault("OPTIONS", {}).update(
            charset="utf8mb4", isolation_level="read committed"
        )
        DATABASES["default"]["TEST"]["CHARSET"] = "utf8mb4"
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(BASE_DIR / "qtasks-tests.sqlite3"),
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
            # A file, not :memory:, so that real worker processes share it.
            "TEST": {"NAME": str(BASE_DIR / f"qtasks-test-{os.getpid()}.sqlite3")},
        }
    }
# Worker subprocesses started by the tests point at the test database by name.
if env.str("QTASKS_TEST_DB_NAME", default=""):
    DATABASES["default"]["NAME"] = env.str("QTASKS_TEST_DB_NAME")
    DATABASES["default"].setdefault("TEST", {})["NAME"] = env.str("QTASKS_TEST_DB_NAME")


def through_pooler(database: dict[str, object], address: str) -> None:
    """Point a DATABASES entry at PgBouncer ("host:port", transaction mode), configured as
    docs/deployment.md says. Worker subprocesses of tests/pgbouncer get it from the env."""
    host, port = address.rsplit(":", 1)
    database.update(HOST=host, PORT=port, DISABLE_SERVER_SIDE_CURSORS=True)


if env.str("QTASKS_TEST_PGBOUNCER", default=""):
    through_pooler(DATABASES["default"], env.str("QTASKS_TEST_PGBOUNCER"))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",  # the browser tests load the admin's CSS and JS
    "django_qtasks",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "/static/"
QTASKS = {"POLL_INTERVAL": 0.05, "RESULT_POLL_INTERVAL": 0.02, "DEFAULT_RETRY_BACKOFF": 0}
# Worker subprocesses of the fault tests may get more QTASKS keys (JSON), e.g. faster
# heartbeats where the test is not about their defaults.
QTASKS.update(json.loads(env.str("QTASKS_TEST_SETTINGS", default="{}")))
# Worker subprocesses of the periodic-task tests get a schedule of their own (JSON).
if env.str("QTASKS_TEST_SCHEDULE", default=""):
    QTASKS["SCHEDULE"] = json.loads(env.str("QTASKS_TEST_SCHEDULE"))

# Django's Tasks framework: built in from Django 6.0, the django-tasks backport on 5.2.
# Without either, tests/djangotasks skips itself.
TASKS_FRAMEWORK = (
    "django.tasks"
    if django.VERSION >= (6, 0)
    else ("django_tasks" if find_spec("django_tasks") else None)
)
if TASKS_FRAMEWORK is not None:
    if TASKS_FRAMEWORK == "django_tasks":
        INSTALLED_APPS.append("django_tasks")
    INSTALLED_APPS.append("tests.djangotasks.taskapp")
    TASKS = {
        "default": {
            "BACKEND": "django_qtasks.backends.QTasksBackend",
            "QUEUES": ["default", "other"],
        }
    }
