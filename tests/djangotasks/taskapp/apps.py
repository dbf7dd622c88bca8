from django.apps import AppConfig


class TaskAppConfig(AppConfig):
    name = "tests.djangotasks.taskapp"
    label = "djangotasks_taskapp"

    def ready(self) -> None:
        from . import receivers  # noqa: F401 - connects Django's task signals
