"""System checks: what ``manage.py check`` says about the QTASKS setup."""

from __future__ import annotations

import sqlite3
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import connections
from django.utils.module_loading import import_string

from django_qtasks.exceptions import ConfigurationError
from django_qtasks.settings import get_settings
from django_qtasks.storage.table import SUPPORTED_VENDORS, supported_vendor_list

MIN_SQLITE = (3, 35)  # UPDATE ... RETURNING


@register()
def check_qtasks(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        return [Error(str(exc), id="django_qtasks.E001")]
    if settings.database not in connections.settings:
        return [
            Error(
                f"QTASKS['DATABASE'] names {settings.database!r}, which is not in DATABASES.",
                id="django_qtasks.E002",
            )
        ]
    vendor = connections[settings.database].vendor
    if vendor not in SUPPORTED_VENDORS:
        return [
            Error(
                f"QTASKS['DATABASE'] {settings.database!r} is {vendor}; django-qtasks "
                f"supports {supported_vendor_list()}.",
                id="django_qtasks.E003",
            )
        ]
    if vendor == "sqlite" and sqlite3.sqlite_version_info < MIN_SQLITE:
        return [
            Error(
                f"SQLite {sqlite3.sqlite_version} is too old: django-qtasks needs "
                f"{'.'.join(map(str, MIN_SQLITE))} or newer (for UPDATE ... RETURNING).",
                id="django_qtasks.E004",
            )
        ]
    if vendor == "sqlite":
        options = connections.settings[settings.database].get("OPTIONS", {})
        if str(options.get("transaction_mode", "")).upper() != "IMMEDIATE":
            return [
                Warning(
                    "SQLite is not set to start transactions IMMEDIATE: your own "
                    "transaction.atomic() blocks that read and then write can fail at once "
                    "with 'database is locked' while a worker writes.",
                    hint=f"Set DATABASES[{settings.database!r}]['OPTIONS']"
                    "['transaction_mode'] = 'IMMEDIATE'.",
                    id="django_qtasks.W001",
                )
            ]
    return []


@register()
def check_qtasks_middlewares(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every ``MIDDLEWARES_BEFORE``/``MIDDLEWARES_AFTER`` path imports. A worker resolves
    them when it starts; a path that does not import passed ``check`` and then stopped
    the worker, so ``check`` (run by every command and by deployment scripts) says so
    first, naming the key and the path."""
    try:
        settings = get_settings()
    except ConfigurationError:
        return []  # check_qtasks says why
    errors: list[CheckMessage] = []
    for key in ("middlewares_before", "middlewares_after"):
        for path in getattr(settings, key):
            try:
                import_string(path)
            except ImportError as exc:
                errors.append(
                    Error(
                        f"QTASKS[{key.upper()!r}] {path!r} cannot be imported: {exc}",
                        id="django_qtasks.E006",
                    )
                )
    return errors


@register(Tags.database)
def check_qtasks_database_version(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """The server's version, where it matters (MariaDB 10.6+, MySQL 8.0+). A database
    check: Django runs it when a command uses the database (``migrate``, ``check
    --database``), not on every start-up, since it connects."""
    try:
        alias = get_settings().database
    except ConfigurationError:
        return []  # check_qtasks says why
    if not databases or alias not in databases or alias not in connections.settings:
        return []
    connection = connections[alias]
    if connection.vendor != "mysql":
        return []
    from django_qtasks.storage.mysql import version_problem

    problem = version_problem(connection)
    if problem is None:
        return []
    return [Error(f"QTASKS['DATABASE'] {alias!r}: {problem}", id="django_qtasks.E005")]
