import logging

from django.apps import AppConfig

log = logging.getLogger(__name__)

#: More new images than this start face indexing of their collections instead.
MAX_IMAGE_IDS = 20_000


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
        elif not Image.objects.filter(video__isnull=False, faces_scanned_at__isnull=False).exists():
            # Only archive keyframes count: a person's acquired web images are indexed
            # at once, and that says nothing about whether the archive is face-indexed.
            return
        ids = sorted({int(i) for i in image_ids})
        if len(ids) > MAX_IMAGE_IDS:
            # A big import: its collections (unscanned images only) instead of a job
            # parameter of hundreds of thousands of ids.
            collection_ids: set[int] = set()
            for start in range(0, len(ids), 10_000):
                collection_ids.update(
                    Image.objects.filter(pk__in=ids[start : start + 10_000])
                    .values_list("collection_id", flat=True)
                    .distinct()
                )
            start_face_indexing(collection_ids=sorted(collection_ids), category_id=category_id)
            return
        start_face_indexing(image_ids=ids, category_id=category_id)
    except Exception:  # noqa: BLE001 - logged; the images stay and can be indexed later
        log.exception("Could not start face detection for %d new images", len(image_ids))
