import pytest

from django_qtasks import AsyncTask, SyncTask, TaskCls
from django_qtasks.api.queue_tasks import AsyncQueueTasks, QueueTasks
from django_qtasks.exceptions import (
    InvalidTaskCall,
    TaskNotRegistered,
    TaskRegistrationError,
)
from django_qtasks.settings import QTasksSettings


@pytest.fixture
def local_app():
    return QueueTasks(QTasksSettings())


def test_bare_decorator_registers_under_the_qualified_name(local_app):
    @local_app.task
    def send(x):
        return x

    assert isinstance(send, SyncTask)
    test_name = "test_bare_decorator_registers_under_the_qualified_name"
    assert send.name == f"{__name__}.{test_name}.<locals>.send"
    assert local_app.get_task(send.name) is send


def test_options_are_kept(local_app):
    @local_app.task(name="mail.send", priority=5, queue="mail", retry=3, retry_on_exc=[OSError],
                    retry_backoff=0.5, max_time=10, tags=["mail"], description="Sends.")
    def send(x):
        return x

    options = send.options
    assert (options.name, options.priority, options.queue) == ("mail.send", 5, "mail")
    assert options.retry == 3
    assert options.retry_on_exc == (OSError,)
    assert options.tags == ("mail",)
    assert options.max_time == 10


def test_retry_on_exc_takes_a_single_class_too(local_app):
    task = local_app.task(retry_on_exc=OSError)(lambda: None)
    assert task.options.retry_on_exc == (OSError,)


def test_calling_a_task_does_not_run_it(local_app):
    ran = []

    @local_app.task
    def work(x, priority=None):
        ran.append(x)

    pending = work(1, priority="goes to the function")
    assert isinstance(pending, TaskCls)
    assert pending.args == (1,)
    assert pending.kwargs == {"priority": "goes to the function"}
    assert ran == []


def test_duplicate_names_are_an_error(local_app):
    @local_app.task(name="same")
    def one():
        pass

    with pytest.raises(TaskRegistrationError, match="'same' is already registered"):

        @local_app.task(name="same")
        def two():
            pass


def test_the_same_function_may_register_again(local_app):
    def job():
        pass

    first = local_app.task(job)
    second = local_app.task(job)
    assert local_app.get_task(first.name) is second


def test_unknown_names_raise_task_not_registered(local_app):
    with pytest.raises(TaskNotRegistered, match="'nope'"):
        local_app.get_task("nope")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": 3}, "Unknown option"),
        ({"retry": -1}, "retry must be an integer"),
        ({"retry": True}, "retry must be an integer"),
        ({"retry": 2**40}, "retry must be an integer from 0 to 1,000,000, got 1099511627776"),
        ({"retry_on_exc": ["ValueError"]}, "retry_on_exc must list exception classes"),
        ({"max_time": 0}, "max_time must be a positive number"),
        ({"retry_backoff": -1}, "retry_backoff must be a positive number"),
        ({"executor": int}, "executor must be a BaseTaskExecutor"),
        ({"name": ""}, "non-empty string"),
        ({"tags": "mail"}, "tags must be a list of strings"),
        ({"tags": ["mail", 1]}, "tags must be a list of strings"),
    ],
)
def test_bad_options_fail_at_registration(local_app, options, message):
    with pytest.raises(TaskRegistrationError, match=message):
        local_app.task(**options)(lambda: None)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"priority": 500}, "priority must be from -100 to 100"), ({"queue": "a b"}, "queue must be")],
)
def test_bad_priority_or_queue_fail_at_registration(local_app, options, message):
    with pytest.raises(InvalidTaskCall, match=message):
        local_app.task(**options)(lambda: None)


def test_async_app_gives_async_tasks_over_the_same_registry(local_app):
    twin = AsyncQueueTasks(shared_with=local_app)

    @twin.task(name="async.job")
    async def job():
        return 1

    assert isinstance(job, AsyncTask)
    assert job.is_async
    assert local_app.get_task("async.job") is job
