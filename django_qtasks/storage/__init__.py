"""Storage: every database operation of the queue, and the only home of its SQL.

``BaseStorage`` is the interface and ``DjangoStorage`` the default (``QTASKS["STORAGE"]``),
for PostgreSQL and SQLite; :mod:`.mysql` is what it becomes on MariaDB and MySQL.
One module per concept: :mod:`.interface` (``BaseStorage``), :mod:`.rows` (row encoding),
:mod:`.table` (the shared ground), :mod:`.enqueue`, :mod:`.claim` (with concurrency
limits), :mod:`.finish`, :mod:`.rescue` (and cancel), :mod:`.flows`, :mod:`.schedules`,
:mod:`.pruning` (with :mod:`.retention` driving it), assembled in :mod:`.django_storage`.
Names given through the package come from :mod:`.storage`, the old module's re-exports
(kept for one release). Storage starts GlobalConfig."""

from __future__ import annotations

from django_qtasks._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, "storage")
