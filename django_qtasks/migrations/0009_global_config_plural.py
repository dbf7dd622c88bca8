"""The admin's name for the GlobalConfig rows: "global config entries", so the page no
longer counts "2 global config". Options only: no schema change."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("django_qtasks", "0008_mysql_indexes"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="configentry",
            options={
                "ordering": ("name", "key"),
                "verbose_name": "global config entry",
                "verbose_name_plural": "global config entries",
            },
        ),
    ]
