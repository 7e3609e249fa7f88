from django.apps import AppConfig


class VivaConfig(AppConfig):
    """The core domain shared by every app: archive, jobs, roles."""

    name = "viva"
    verbose_name = "VIVA archive"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import signals  # noqa: F401
