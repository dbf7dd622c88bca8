import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_qtasks.api.queue_tasks import build_broker
from django_qtasks.checks import check_qtasks
from django_qtasks.settings import QTasksSettings, build_settings, get_settings


def test_defaults_when_unset():
    assert build_settings(None) == QTasksSettings()


def test_values_are_read_and_normalised():
    s = build_settings({"QUEUES": ["default", "mail"], "POLL_INTERVAL": 2, "CONCURRENCY": 8})
    assert s.queues == ("default", "mail")
    assert s.poll_interval == 2.0
    assert s.concurrency == 8
    assert QTasksSettings().max_rescues == 3  # a worker's death never spends a retry
    assert build_settings({"MAX_RESCUES": 0}).max_rescues == 0


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"POLL_INTERVALL": 1}, "'POLL_INTERVALL'"),
        ({"CONCURRENCY": 0}, "'CONCURRENCY'"),
        ({"CONCURRENCY": "4"}, "'CONCURRENCY'"),
        ({"CONCURRENCY": True}, "'CONCURRENCY'"),
        ({"DEFAULT_PRIORITY": 101}, "'DEFAULT_PRIORITY'"),
        ({"DEFAULT_QUEUE": "no spaces"}, "'DEFAULT_QUEUE'"),
        ({"QUEUES": "default"}, "'QUEUES'"),
        ({"QUEUES": ["a"], "DEFAULT_QUEUE": "b"}, "'DEFAULT_QUEUE'"),
        ({"POLL_INTERVAL": 0}, "'POLL_INTERVAL'"),
        ({"GRACE": -1}, "'GRACE'"),
        ({"DURABLE_CLAIMS": "yes"}, "'DURABLE_CLAIMS'"),
        ({"MAX_RESCUES": -1}, "'MAX_RESCUES'"),
        ({"MAX_RESCUES": 2.5}, "'MAX_RESCUES'"),
        ({"MAX_RESCUES": None}, "'MAX_RESCUES'"),
        ({"PREPARED_STATEMENTS": "yes"}, "'PREPARED_STATEMENTS'"),
        ({"MIDDLEWARES_BEFORE": "a.b"}, "'MIDDLEWARES_BEFORE'"),
        ({"broker": "x"}, "'broker'"),
    ],
)
def test_bad_settings_name_the_key(raw, named):
    with pytest.raises(ImproperlyConfigured, match=named):
        build_settings(raw)


def test_not_a_dict():
    with pytest.raises(ImproperlyConfigured, match="QTASKS must be a dict"):
        build_settings(["POLL_INTERVAL"])


def test_override_settings_is_seen():
    with override_settings(QTASKS={"DEFAULT_QUEUE": "other"}):
        assert get_settings().default_queue == "other"
    assert get_settings().default_queue == "default"


@pytest.mark.parametrize(
    ("key", "path", "message"),
    [
        ("BROKER", "no.such.Broker", "cannot be imported"),
        ("STORAGE", "django_qtasks.broker.DjangoBroker", "not a subclass of BaseStorage"),
    ],
)
def test_bad_component_paths_name_the_key(key, path, message):
    with pytest.raises(ImproperlyConfigured, match=rf"QTASKS\['{key}'\].*{message}"):
        build_broker(build_settings({key: path}))


@pytest.mark.parametrize(
    ("qtasks", "error_id", "text"),
    [
        ({"CONCURENCY": 2}, "django_qtasks.E001", "unknown key 'CONCURENCY'"),
        ({"DATABASE": "elsewhere"}, "django_qtasks.E002", "'elsewhere', which is not in DATABASES"),
    ],
)
def test_system_checks_report_bad_setups(qtasks, error_id, text):
    with override_settings(QTASKS=qtasks):
        errors = check_qtasks()
    assert [e.id for e in errors] == [error_id]
    assert text in errors[0].msg


def test_system_checks_pass_on_this_setup():
    assert check_qtasks() == []


def test_sqlite_without_immediate_transactions_gets_a_warning(monkeypatch):
    from django.db import connections

    if connections["default"].vendor != "sqlite":
        pytest.skip("an SQLite check")
    options = connections.settings["default"].setdefault("OPTIONS", {})
    monkeypatch.delitem(options, "transaction_mode", raising=False)
    warnings = check_qtasks()
    assert [w.id for w in warnings] == ["django_qtasks.W001"]
    assert "transaction_mode" in warnings[0].hint
