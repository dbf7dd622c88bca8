"""PostgreSQL only: wake idle workers on enqueue, and vacuum the queue table often.

A statement-level trigger sends one NOTIFY per INSERT statement (not per row), with
the queues of the new rows, so bulk enqueues cost one notification and workers of
other queues stay asleep. The queue table churns (every task is updated
two or three times), so autovacuum visits it far sooner than the defaults would.
"""

from django.db import migrations

TABLE = "django_qtasks_taskrecord"

CREATE = f"""
CREATE OR REPLACE FUNCTION django_qtasks_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ready_queues text;
BEGIN
    -- Delayed rows too: an idle worker wakes, finds nothing ready, and sleeps until
    -- the earliest one is due instead of a whole poll interval.
    SELECT string_agg(DISTINCT queue, ',') INTO ready_queues FROM new_rows;
    IF ready_queues IS NOT NULL THEN
        PERFORM pg_notify('django_qtasks', ready_queues);
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS django_qtasks_notify ON {TABLE};
CREATE TRIGGER django_qtasks_notify AFTER INSERT ON {TABLE}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION django_qtasks_notify();
ALTER TABLE {TABLE} SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.05
);
"""

DROP = f"""
DROP TRIGGER IF EXISTS django_qtasks_notify ON {TABLE};
DROP FUNCTION IF EXISTS django_qtasks_notify();
ALTER TABLE {TABLE} RESET (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor);
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("django_qtasks", "0003_admin_indexes")]
    operations = [migrations.RunPython(create, drop, elidable=False)]
