"""``DjangoStorage``, the default Storage, assembled from one mixin per concept.

Each concept's statements live in their own module (enqueue, claim, finish, rescue,
flows, schedules, pruning) on the shared ground of :mod:`.table`; this class only
puts them together and becomes :class:`~django_qtasks.storage.mysql.MySQLStorage` on
MariaDB and MySQL.
"""

from __future__ import annotations

from django.db import connections

from django_qtasks.global_config.global_config import BaseGlobalConfig
from django_qtasks.settings import QTasksSettings
from django_qtasks.storage.claim import ClaimMixin
from django_qtasks.storage.finish import FinishMixin
from django_qtasks.storage.pruning import PruneMixin
from django_qtasks.storage.rescue import RescueMixin
from django_qtasks.storage.schedules import ScheduleMixin


class DjangoStorage(ClaimMixin, FinishMixin, RescueMixin, ScheduleMixin, PruneMixin):
    """Storage on the ``TaskRecord`` model.

    On MariaDB or MySQL it is a :class:`~django_qtasks.storage.mysql.MySQLStorage`,
    whose statements differ where those databases lack PostgreSQL's."""

    def __new__(cls, settings: QTasksSettings, global_config: BaseGlobalConfig) -> DjangoStorage:
        if cls is DjangoStorage and connections[settings.database].vendor == "mysql":
            from django_qtasks.storage.mysql import MySQLStorage

            cls = MySQLStorage
        return super().__new__(cls)
