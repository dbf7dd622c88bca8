from django.db import models


class Execution(models.Model):
    """One row per run of a test task: side effects are counted, not statuses."""

    key = models.CharField(max_length=100, db_index=True)
    attempt = models.IntegerField(default=0)
    started = models.FloatField(default=0)
    finished = models.FloatField(default=0)
