from django.apps import AppConfig


class RetrievalConfig(AppConfig):
    name = "retrieval"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # New keyframes and acquired images get hash codes in the background (issue 6).
        from viva.signals import images_added

        from .search.receivers import index_new_images

        images_added.connect(index_new_images, dispatch_uid="retrieval.index_new_images")
