"""The example site's URLs beside the admin, for tests that open its pages with the
test client on the test database."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("example_project.demo.urls")),
]
