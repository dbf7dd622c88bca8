from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_qtasks", "0005_schedules"),
    ]

    operations = [
        migrations.AddField(
            model_name="taskrecord",
            name="flow_id",
            field=models.UUIDField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="taskrecord",
            name="flow_stage",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="taskrecord",
            name="flow_index",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name="taskrecord",
            name="status",
            field=models.CharField(
                choices=[
                    ("new", "new"),
                    ("process", "process"),
                    ("retry", "retry"),
                    ("success", "success"),
                    ("error", "error"),
                    ("cancel", "cancel"),
                    ("blocked", "blocked"),
                ],
                default="new",
                max_length=16,
            ),
        ),
        migrations.AddIndex(
            model_name="taskrecord",
            index=models.Index(
                condition=models.Q(("flow_id__isnull", False)),
                fields=["flow_id", "flow_stage"],
                name="qtasks_flow_idx",
            ),
        ),
    ]
