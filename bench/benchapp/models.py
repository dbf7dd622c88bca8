from django.db import models


class SideEffect(models.Model):
    """One row per run of a benchmark task: what really happened, whatever the statuses say."""

    key = models.IntegerField(db_index=True)
    pid = models.IntegerField()
