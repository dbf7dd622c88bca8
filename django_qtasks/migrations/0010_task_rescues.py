"""``TaskRecord.rescues``: how many runs of a task were lost to its worker (a crash, a
cut connection). A rescued run no longer spends one of the task's attempts; this count,
capped by ``QTASKS["MAX_RESCUES"]``, is what stops a task that keeps killing its
worker. The column has a database default of 0, so existing rows and the INSERTs of a
worker still on the previous release need nothing."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_qtasks", "0009_global_config_plural"),
    ]

    operations = [
        migrations.AddField(
            model_name="taskrecord",
            name="rescues",
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
    ]
