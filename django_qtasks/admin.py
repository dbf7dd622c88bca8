"""The Django admin for tasks and GlobalConfig."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin
from django.http import HttpRequest

from .models import ConfigEntry, TaskRecord

if TYPE_CHECKING:
    TaskRecordAdminBase = admin.ModelAdmin[TaskRecord]
    ConfigEntryAdminBase = admin.ModelAdmin[ConfigEntry]
else:
    TaskRecordAdminBase = ConfigEntryAdminBase = admin.ModelAdmin


@admin.register(TaskRecord)
class TaskRecordAdmin(TaskRecordAdminBase):
    list_display = (
        "task_name",
        "status",
        "queue",
        "priority",
        "attempt",
        "created_at",
        "started_at",
        "finished_at",
    )
    list_filter = ("status", "queue")
    search_fields = ("=uuid", "task_name")
    ordering = ("-created_at",)
    show_full_result_count = False
    readonly_fields = [f.name for f in TaskRecord._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Tasks are created by code (add_task), which validates what a form cannot.
        return False


@admin.register(ConfigEntry)
class ConfigEntryAdmin(ConfigEntryAdminBase):
    list_display = ("name", "key", "value", "expires_at", "updated_at")
    list_filter = ("name",)
