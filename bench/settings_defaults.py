"""Settings for the "defaults" rows of the benchmarks: what a project gets when it
follows the README and changes nothing.

PostgreSQL from BENCH_DATABASE_URL (a scratch database), no ``QTASKS`` key at all,
``CONN_MAX_AGE`` left at Django's default (0), and our backend for Django's own Tasks
framework, so ``django.tasks`` ``enqueue()`` can be measured beside ``add_task()``.
``bench/settings.py`` (the tuned rows) starts from this.
"""

from __future__ import annotations

import environ

env = environ.Env()
DATABASE_URL = env.str(
    "BENCH_DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/qtasks_bench"
)
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
SECRET_KEY = "bench-only"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django_qtasks", "bench.benchapp"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TASKS = {"default": {"BACKEND": "django_qtasks.backends.QTasksBackend"}}
