"""The demo's URLs, namespaced so templates and redirects name them unambiguously."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "demo"

urlpatterns = [
    path("", views.index, name="index"),
    path("tasks.json", views.tasks_json, name="tasks_json"),
    path("start/<slug:kind>/", views.start, name="start"),
    path("tasks/<uuid:uuid>/cancel/", views.cancel, name="cancel"),
]
