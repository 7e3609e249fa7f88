import logging

from django.apps import AppConfig

log = logging.getLogger(__name__)


class TrainingConfig(AppConfig):
    name = "training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from viva.signals import images_added

        images_added.connect(detect_faces_on_arrival, dispatch_uid="training.faces.arrival")


def detect_faces_on_arrival(sender, image_ids, category_id=None, source="", **kwargs) -> None:
    """Background face detection on what arrives (issue 7, item 2): images acquired for a
    person category are indexed at once (the annotator labels their faces next); archive
    imports are indexed when the archive has been face-indexed before, so the face index
    stays complete. Never raises: a failing receiver must not undo an import."""
    try:
        from annotation.models import Category
        from viva.models import Image

        from .faces.jobs import start_face_indexing

        if category_id is not None:
            kind = Category.objects.filter(pk=category_id).values_list("kind", flat=True).first()
            if kind != Category.Kind.PERSON:
                return
        elif not Image.objects.filter(faces_scanned_at__isnull=False).exists():
            return
        start_face_indexing(image_ids=list(image_ids), category_id=category_id)
    except Exception:  # noqa: BLE001 - logged; the images stay and can be indexed later
        log.exception("Could not start face detection for %d new images", len(image_ids))
