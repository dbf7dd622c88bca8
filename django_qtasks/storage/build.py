"""Which Storage class a project's settings build.

``QTASKS["STORAGE"]`` names the class; the default, ``DjangoStorage``, is built as
:class:`~django_qtasks.storage.mysql.MySQLStorage` when the queue's database is
MariaDB or MySQL, so the setting needs no change there. The choice lives here, above
both classes, so that neither imports the other's module to make it.
"""

from __future__ import annotations

from django.db import connections

from django_qtasks.settings import QTasksSettings, import_component
from django_qtasks.storage.django_storage import DjangoStorage
from django_qtasks.storage.interface import BaseStorage
from django_qtasks.storage.mysql import MySQLStorage


def storage_class(settings: QTasksSettings) -> type[BaseStorage]:
    """The class ``QTASKS["STORAGE"]`` names, or its MariaDB/MySQL variant for the
    default one (a project's own subclass is taken as it is)."""
    cls: type[BaseStorage] = import_component(settings, "storage", BaseStorage)
    if cls is DjangoStorage and connections[settings.database].vendor == "mysql":
        return MySQLStorage
    return cls
