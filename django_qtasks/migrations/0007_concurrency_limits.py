"""Concurrency limits: each row carries its group and its limit, so that any worker
enforces the limit without the task registry (docs/concurrency-limits.md)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_qtasks", "0006_flows"),
    ]

    operations = [
        migrations.AddField(
            model_name="taskrecord",
            name="concurrency_key",
            field=models.CharField(blank=True, max_length=255, null=True),
        ),
        migrations.AddField(
            model_name="taskrecord",
            name="max_concurrency",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="taskrecord",
            index=models.Index(
                condition=models.Q(("status", "process"), ("concurrency_key__isnull", False)),
                fields=["task_name", "concurrency_key"],
                name="qtasks_limited_running_idx",
            ),
        ),
        migrations.AddConstraint(
            model_name="taskrecord",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("concurrency_key__isnull", True), ("max_concurrency__isnull", True)),
                    models.Q(("concurrency_key__isnull", False), ("max_concurrency__gte", 1)),
                    _connector="OR",
                ),
                name="qtasks_concurrency_limit",
            ),
        ),
    ]
