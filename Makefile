# The two commands a newcomer runs: `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DOCS_SITE := $(or $(TMPDIR),/tmp)/qtasks-docs-site
# Tests run in two processes (pytest-xdist): most of them wait on real workers.
PYTEST := pytest -n $(or $(PYTEST_PROCESSES),2)

.PHONY: run test check browser pgbouncer screenshots test-sqlite test-postgres test-lts test-mariadb docs chaos bench venv clean

venv:
	@scripts/venv.sh $(VENV)

## make run: install, migrate SQLite, create an admin login, start the example site and a worker.
run: venv
	@scripts/run-example.sh

## make test: lint, types, migrations, docs, then the suite on SQLite (and PostgreSQL when
## DATABASE_URL is set, with the newest Django and with Django 5.2 LTS; and MariaDB/MySQL
## when MARIADB_URL is set). One suite after another: each already uses both cores.
test: venv check test-sqlite
	@if [ -n "$$DATABASE_URL" ]; then $(MAKE) --no-print-directory test-postgres test-lts; fi
	@if [ -n "$$MARIADB_URL" ]; then $(MAKE) --no-print-directory test-mariadb; fi

check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m django makemigrations --check --dry-run --settings tests.settings
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir $(DOCS_SITE)

## make browser: Debian's Chromium for the browser tests (Playwright drives it; no downloads).
browser:
	@scripts/ensure-browser.sh

## make pgbouncer: Debian's PgBouncer for tests/pgbouncer (the PostgreSQL passes run it).
pgbouncer:
	@scripts/ensure-pgbouncer.sh

test-sqlite: venv browser
	DATABASE_URL= $(VENV)/bin/$(PYTEST) $(PYTEST_ARGS)

test-postgres: venv
	@test -n "$$DATABASE_URL" || { echo "DATABASE_URL is not set" >&2; exit 2; }
	@scripts/ensure-pgbouncer.sh
	$(VENV)/bin/$(PYTEST) -m "not browser" $(PYTEST_ARGS)

test-lts:
	@scripts/venv.sh .venv-lts
	@test -n "$$DATABASE_URL" || { echo "DATABASE_URL is not set" >&2; exit 2; }
	@scripts/ensure-pgbouncer.sh
	.venv-lts/bin/$(PYTEST) -m "not browser" $(PYTEST_ARGS)

## make test-mariadb: the suite on MariaDB 10.6+ / MySQL 8.0+ at MARIADB_URL (default: the
## local server, root without a password), started first if it is installed but stopped.
test-mariadb: venv
	@MARIADB_URL=$${MARIADB_URL:-mysql://root@127.0.0.1:3306/test} scripts/ensure-mariadb.sh
	DATABASE_URL=$${MARIADB_URL:-mysql://root@127.0.0.1:3306/test} $(VENV)/bin/$(PYTEST) -m "not browser" $(PYTEST_ARGS)

## make docs: serve the documentation on 127.0.0.1:$(DOCS_PORT), beside `make run` (8000).
DOCS_PORT ?= 8001
docs: venv
	@if (exec 3<>/dev/tcp/127.0.0.1/$(DOCS_PORT)) 2>/dev/null; then \
	  echo "Port $(DOCS_PORT) is taken (by another 'make docs'?): stop it, or choose another port: DOCS_PORT=8002 make docs" >&2; \
	  exit 1; fi
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

## make screenshots: refresh the admin pictures in docs/images from the browser tests.
screenshots: venv browser
	QTASKS_SCREENSHOTS=$(CURDIR)/docs/images DATABASE_URL= $(VENV)/bin/pytest tests/browser -p no:xdist

## make chaos: kill workers at random under load and count lost and repeated tasks.
chaos: venv
	$(PY) bench/chaos.py

## make bench: our worker against django-tasks-db, procrastinate and Celery on the local
## PostgreSQL and Redis; peers get virtualenvs of their own in .bench/. BENCH_ARGS=--quick
## for a smoke run, or e.g. BENCH_ARGS="--rounds 5 --only ours,celery".
bench: venv
	@bench/peers/setup.sh
	$(PY) bench/compare.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-lts .bench $(DOCS_SITE) .mypy_cache .pytest_cache .ruff_cache
