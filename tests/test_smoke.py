import pytest

from django_qtasks import app
from tests.testapp import tasks


@pytest.mark.django_db(transaction=True)
def test_a_task_runs_end_to_end(run_worker):
    task = tasks.add.add_task(2, 3)
    assert task.status == "new"
    assert run_worker() == 0
    done = app.get(task.uuid)
    assert done.status == "success"
    assert done.returning == 5
