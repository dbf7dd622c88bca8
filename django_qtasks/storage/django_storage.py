"""``DjangoStorage``, the default Storage, assembled from one mixin per concept.

Each concept's statements live in their own module (enqueue, claim, finish, rescue,
flows, schedules, pruning) on the shared ground of :mod:`.table`; this class only
puts them together. On MariaDB and MySQL the default setting builds its subclass
:class:`~django_qtasks.storage.mysql.MySQLStorage` instead (:mod:`.build`).
"""

from __future__ import annotations

from django_qtasks.storage.claim import ClaimMixin
from django_qtasks.storage.finish import FinishMixin
from django_qtasks.storage.pruning import PruneMixin
from django_qtasks.storage.rescue import RescueMixin
from django_qtasks.storage.schedules import ScheduleMixin


class DjangoStorage(ClaimMixin, FinishMixin, RescueMixin, ScheduleMixin, PruneMixin):
    """Storage on the ``TaskRecord`` model.

    On MariaDB or MySQL the default ``QTASKS["STORAGE"]`` builds a
    :class:`~django_qtasks.storage.mysql.MySQLStorage` instead, whose statements
    differ where those databases lack PostgreSQL's (:mod:`.build`)."""
