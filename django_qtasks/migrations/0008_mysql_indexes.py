"""MariaDB and MySQL only: the claim index and the unique key, which elsewhere are a
partial index and a partial unique constraint (0001, 0002).

Neither database has partial or expression indexes (Django warns, models.W036, W037
and W043, and creates the others' indexes without their condition). Virtual generated
columns stand in: each is NULL outside the rows the partial index would hold, and
InnoDB indexes them (NULLs never collide in a unique index):

- ``qtasks_claim_priority``: ``-priority`` while waiting (``new``, ``retry``), else
  NULL. Indexed with ``run_after, created_at``: all ascending, the claim order, so a
  claim reads it in order and stops after a batch (docs/databases.md).
- ``qtasks_active_unique_key``: ``unique_key`` while waiting or running, else NULL;
  unique with ``task_name``. Compared byte for byte (utf8mb4_bin), as on PostgreSQL,
  whatever the table's collation.

The model does not declare the columns (one model, one set of migrations for every
database); only the MariaDB storage reads them. A later migration that changes
``status``, ``priority`` or ``unique_key`` must drop and re-add them on these
databases.
"""

from django.db import migrations

TABLE = "django_qtasks_taskrecord"

CREATE = [
    f"ALTER TABLE {TABLE} "
    "ADD COLUMN qtasks_claim_priority SMALLINT GENERATED ALWAYS AS "
    "(CASE WHEN status IN ('new', 'retry') THEN -priority END) VIRTUAL, "
    "ADD COLUMN qtasks_active_unique_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin "
    "GENERATED ALWAYS AS (CASE WHEN status IN ('new', 'retry', 'process') THEN unique_key END) "
    "VIRTUAL",
    f"CREATE INDEX qtasks_my_claim_idx ON {TABLE} (qtasks_claim_priority, run_after, created_at)",
    f"CREATE UNIQUE INDEX qtasks_my_unique_active_key ON {TABLE} "
    "(task_name, qtasks_active_unique_key)",
]

DROP = [
    f"DROP INDEX qtasks_my_unique_active_key ON {TABLE}",
    f"DROP INDEX qtasks_my_claim_idx ON {TABLE}",
    f"ALTER TABLE {TABLE} DROP COLUMN qtasks_active_unique_key, DROP COLUMN qtasks_claim_priority",
]


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "mysql":
        for statement in CREATE:
            schema_editor.execute(statement)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "mysql":
        for statement in DROP:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("django_qtasks", "0007_concurrency_limits")]
    # DDL only, and MariaDB cannot run it in a transaction.
    atomic = False
    operations = [migrations.RunPython(create, drop, atomic=False, elidable=False)]
