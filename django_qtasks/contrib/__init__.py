"""Integrations built on the public and storage interfaces: the ``django.tasks``
backend, Prometheus metrics, the test helpers and their pytest plugin, and the readings
of the dashboard and of ``qtasks_status``."""
