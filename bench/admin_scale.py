"""The admin at scale: fill a scratch PostgreSQL database with a million tasks and time
the task list (with and without filters), a task page and the dashboard through
Django's test client.

    .venv/bin/python bench/admin_scale.py [--rows 1000000] [--url postgres://.../qtasks_admin]

It drops and recreates the database named in ``--url``. Rows are made by one
``INSERT ... SELECT generate_series`` (a few seconds per million), then ``VACUUM
ANALYZE`` runs, as autovacuum would on a live table. For comparison it also times what
Django's admin would do by default: ``COUNT(*)`` over the table and ``SELECT DISTINCT``
for a filter's choices.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh_database

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/qtasks_admin_bench"
urlpatterns: list[Any] = []  # filled in configure(): this module is the URLconf


def configure(url: str) -> None:
    import django
    import environ
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only",
        USE_TZ=True,
        ALLOWED_HOSTS=["testserver"],
        DATABASES={"default": environ.Env.db_url_config(url)},
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "django_qtasks",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        ROOT_URLCONF=__name__,
        TEMPLATES=[
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
        ],
        STATIC_URL="/static/",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        QTASKS={},
    )
    django.setup()
    from django.contrib import admin
    from django.core.management import call_command
    from django.urls import path

    urlpatterns.append(path("admin/", admin.site.urls))
    call_command("migrate", verbosity=0)


FILL = """
INSERT INTO django_qtasks_taskrecord (
    uuid, task_name, queue, priority, status, args, kwargs, "returning", traceback, errors,
    attempt, max_retries, run_after, created_at, updated_at, started_at, finished_at,
    worker_id, unique_key, cancel_requested, progress, tags)
SELECT gen_random_uuid(),
       'app.tasks.task_' || (i %% 20),
       (ARRAY['default', 'mail', 'images', 'reports', 'slow'])[1 + i %% 5],
       0, s.status, jsonb_build_array(i, 'user@example.com'), '{}'::jsonb,
       CASE WHEN s.status = 'success' THEN to_jsonb(i) END,
       CASE WHEN s.status = 'error' THEN 'Traceback (most recent call last): ...' ELSE '' END,
       '[]'::jsonb, 1, 0, t.ts, t.ts, t.ts,
       CASE WHEN s.status <> 'new' THEN t.ts END,
       CASE WHEN s.status IN ('success', 'error', 'cancel') THEN t.ts + interval '1 second' END,
       CASE WHEN s.status = 'process' THEN 'bench-worker' ELSE '' END,
       NULL, false, NULL, '[]'::jsonb
FROM generate_series(1, %(rows)s) AS i,
     LATERAL (SELECT now() - (%(rows)s - i) * interval '2 seconds' AS ts) AS t,
     LATERAL (SELECT CASE WHEN i > %(rows)s - 2000 AND i %% 4 = 0 THEN 'new'
                          WHEN i > %(rows)s - 200 AND i %% 4 = 1 THEN 'process'
                          WHEN i %% 50 = 0 THEN 'error'
                          WHEN i %% 333 = 0 THEN 'cancel'
                          ELSE 'success' END AS status) AS s
"""


def fill(rows: int) -> float:
    from django.db import connection

    start = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(FILL, {"rows": rows})
    took = time.perf_counter() - start
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE django_qtasks_taskrecord")
    return took


class QueryLog:
    """Counts the queries of a request and times each (``connection.execute_wrapper``)."""

    def __init__(self) -> None:
        self.queries: list[tuple[float, str]] = []

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.queries.append(((time.perf_counter() - start) * 1000, sql))


def timed(fn: Any, runs: int) -> tuple[float, float, QueryLog]:
    """Median and worst milliseconds over ``runs`` (after one warm-up), and the queries
    of the last run."""
    from django.db import connection

    fn()
    times = []
    for _ in range(runs):
        log = QueryLog()
        with connection.execute_wrapper(log):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times), log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()

    fresh_database(options.url)
    configure(options.url)
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from django_qtasks.models import TaskRecord

    took = fill(options.rows)
    print(f"filled {options.rows:,} rows in {took:.1f} s (INSERT ... SELECT generate_series)")

    user = get_user_model().objects.create_superuser("bench", "b@example.com", "pw")
    client = Client()
    client.force_login(user)
    some = TaskRecord.objects.filter(status="error").order_by("-created_at").first()
    assert some is not None
    today = timezone.localdate().isoformat()
    base = "/admin/django_qtasks/taskrecord/"
    pages = [
        ("list, unfiltered", base),
        ("list, page 50", base + "?p=50"),
        ("list, status=error", base + "?status__exact=error"),
        ("list, queue=mail", base + "?queue=mail"),
        ("list, task name", base + "?task_name=app.tasks.task_7"),
        ("list, status+queue", base + "?status__exact=new&queue=mail"),
        ("list, created today", base + f"?created_at__gte={today}%2000:00:00%2B00:00"),
        ("list, search name", base + "?q=task_13"),
        ("list, search uuid", base + f"?q={some.pk}"),
        ("task page", base + f"{some.pk}/change/"),
        ("dashboard", base + "dashboard/"),
        ("dashboard fragment", base + "dashboard/?fragment=1"),
        ("global config", "/admin/django_qtasks/configentry/"),
    ]
    header = f"{'page':<22} {'median ms':>10} {'worst ms':>9} {'queries':>8} {'in SQL ms':>10}"
    print(f"\n{header}  slowest query")
    for label, url in pages:

        def get(url: str = url) -> None:
            response = client.get(url)
            assert response.status_code == 200, (url, response.status_code)

        median, worst, log = timed(get, options.runs)
        in_sql = sum(ms for ms, _ in log.queries)
        slowest_ms, slowest = max(log.queries)
        print(
            f"{label:<22} {median:>10.1f} {worst:>9.1f} {len(log.queries):>8} {in_sql:>10.1f}"
            f"  {slowest_ms:.1f} ms: {' '.join(slowest.split())[:90]}"
        )

    print("\nwhat the admin avoids, for comparison:")
    for label, sql in [
        ("COUNT(*) over the table", "SELECT COUNT(*) FROM django_qtasks_taskrecord"),
        ("SELECT DISTINCT queue", "SELECT DISTINCT queue FROM django_qtasks_taskrecord"),
        (
            "GROUP BY status",
            "SELECT status, COUNT(*) FROM django_qtasks_taskrecord GROUP BY status",
        ),
    ]:

        def run(sql: str = sql) -> None:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                cursor.fetchall()

        median, worst, _log = timed(run, options.runs)
        print(f"{label:<26} {median:>8.1f} ms median {worst:>8.1f} ms worst")


if __name__ == "__main__":
    main()
