"""Storage: every database operation of the queue, and the only home of its SQL.

``BaseStorage`` is the interface and ``DjangoStorage`` the default (``QTASKS["STORAGE"]``),
for PostgreSQL and SQLite; :mod:`.mysql` is what it becomes on MariaDB and MySQL.
Other names come from :mod:`django_qtasks.storage.storage`. Storage starts GlobalConfig."""

from __future__ import annotations

from django_qtasks._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, "storage")
