"""The demo page at ``/`` and the admin, where the same tasks can be inspected and edited."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("example_project.demo.urls")),
]
