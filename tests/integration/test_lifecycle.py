"""The six components start and stop in the seed's order."""

import pytest

from django_qtasks import app
from django_qtasks.broker.broker import DjangoBroker
from django_qtasks.signals import component_started, component_stopped


@pytest.mark.django_db(transaction=True)
def test_start_and_stop_order(run_worker):
    events = []

    def started(sender, name, **kwargs):
        events.append(("start", name))

    def stopped(sender, name, **kwargs):
        events.append(("stop", name))

    component_started.connect(started)
    component_stopped.connect(stopped)
    try:
        assert run_worker() == 0
    finally:
        component_started.disconnect(started)
        component_stopped.disconnect(stopped)
    assert events == [
        ("start", "starter"),
        ("start", "worker"),
        ("start", "broker"),
        ("start", "storage"),
        ("start", "global_config"),
        ("stop", "global_config"),
        ("stop", "storage"),
        ("stop", "broker"),
        ("stop", "worker"),
        ("stop", "starter"),
    ]


def test_the_broker_owns_storage_which_owns_global_config():
    broker = app.broker
    assert isinstance(broker, DjangoBroker)
    assert broker.storage.global_config.settings is broker.settings


@pytest.mark.django_db
def test_global_config_values_expire():
    config = app.broker.storage.global_config
    config.set("flags", "paused:mail", True)
    config.set("workers", "w1", {"pid": 1}, ttl=-1)  # already expired
    assert config.get("flags", "paused:mail") is True
    assert config.get("workers", "w1", "gone") == "gone"
    assert config.items("workers") == {}
    config.set("workers", "w1", {"pid": 2}, ttl=60)
    assert config.items("workers") == {"w1": {"pid": 2}}
    config.delete("workers", "w1")
    assert config.items("workers") == {}
