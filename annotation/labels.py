"""Saving labels: one batch, one transaction, every change in the event log.

Used by the grid, review, retrieval feedback, imports and the API, so every way of
labelling obeys the same rules: unknown images or categories are rejected with a
message, unchanged labels write nothing, and concurrent saves of the same item end in
the later value with both events kept (the category row is locked; SQLite serialises
writers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction
from django.utils import timezone

from viva.models import Face, Image

from .models import Annotation, AnnotationEvent, Category, Label, Source

VALID_VALUES = {Label.POSITIVE, Label.NEGATIVE, Label.NEUTRAL}
MAX_BATCH = 5000


class LabelError(Exception):
    """The whole batch was refused; the message is meant for the user."""


@dataclass
class SaveResult:
    created: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    rejected: list[dict] = field(default_factory=list)

    @property
    def saved(self) -> int:
        return self.created + self.updated + self.removed

    def as_dict(self) -> dict:
        return {
            "saved": self.saved,
            "created": self.created,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
        }


def parse_value(raw) -> int | None:
    """Accept 1/-1/0/None or 'positive'/'negative'/'neutral'/'none'."""
    if raw is None or raw == "" or raw == "none":
        return None
    names = {"positive": 1, "negative": -1, "neutral": 0, "pos": 1, "neg": -1, "neu": 0}
    if isinstance(raw, str):
        if raw.lower() in names:
            return names[raw.lower()]
        try:
            raw = int(raw)
        except ValueError:
            raise LabelError(f"Unknown label {raw!r}.") from None
    if isinstance(raw, bool) or raw not in VALID_VALUES:
        raise LabelError(f"Unknown label {raw!r}.")
    return int(raw)


def save_labels(
    category: Category | int,
    changes: Iterable[tuple[int, int | None]],
    *,
    user=None,
    source: str = Source.GRID,
) -> SaveResult:
    """Apply ``(image_id, value)`` pairs for one category; ``None`` removes a label."""
    return _save_with_retry(category, changes, user, source, faces=False)


def save_face_labels(
    category: Category | int,
    changes: Iterable[tuple[int, int | None]],
    *,
    user=None,
    source: str = Source.GRID,
) -> SaveResult:
    """Apply ``(face_id, value)`` pairs for one (person) category; ``None`` removes a label.

    Face labels are annotations with ``face`` set (and ``image`` = the face's image), so the
    event log, review and training read them like image labels.
    """
    return _save_with_retry(category, changes, user, source, faces=True)


def _save_with_retry(
    category: Category | int,
    changes: Iterable[tuple[int, int | None]],
    user,
    source: str,
    *,
    faces: bool,
) -> SaveResult:
    wanted: dict[int, int | None] = {}
    for item_id, value in changes:
        wanted[int(item_id)] = value  # the last word for an item wins within a batch
    if len(wanted) > MAX_BATCH:
        raise LabelError(f"At most {MAX_BATCH} labels can be saved at once.")
    category_id = category.pk if isinstance(category, Category) else int(category)
    for attempt in range(3):
        try:
            return _save(category_id, wanted, user, source, faces=faces)
        except IntegrityError:
            # Another annotator inserted the same label between our read and our write;
            # the retry sees that row and updates it, so both changes are logged.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _save(
    category_id: int, wanted: dict[int, int | None], user, source: str, *, faces: bool
) -> SaveResult:
    """``wanted`` maps image ids (or face ids when ``faces``) to values."""
    result = SaveResult()
    now = timezone.now()
    user_id = user.pk if user is not None and user.is_authenticated else None
    with transaction.atomic():
        # Locking the category row serialises concurrent saves to one category, so two
        # annotators inserting the same new label cannot collide on the unique index
        # (PostgreSQL); SQLite already serialises writers.
        category = (
            Category.objects.select_for_update().filter(pk=category_id).only("pk", "name").first()
        )
        if category is None:
            raise LabelError("This category no longer exists; the labels were not saved.")
        if faces:
            # item id -> image id of the face
            items = dict(Face.objects.filter(pk__in=list(wanted)).values_list("pk", "image_id"))
            missing = "This face no longer exists."
        else:
            items = {
                pk: pk
                for pk in Image.objects.filter(pk__in=list(wanted)).values_list("pk", flat=True)
            }
            missing = "This image no longer exists."
        for item_id in wanted.keys() - items.keys():
            result.rejected.append({"face" if faces else "image": item_id, "error": missing})
        rows = Annotation.objects.select_for_update().filter(category_id=category_id)
        if faces:
            rows = rows.filter(face_id__in=list(items))
        else:
            rows = rows.filter(face__isnull=True, image_id__in=list(items))
        current = {
            (a.face_id if faces else a.image_id): a
            for a in rows.only("pk", "image_id", "face_id", "value")
        }
        to_create, to_update, to_delete, events = [], [], [], []
        for item_id, image_id in items.items():
            face_id = item_id if faces else None
            value = wanted[item_id]
            row = current.get(item_id)
            old = row.value if row else None
            if old == value:
                result.unchanged += 1
                continue
            if row is None:
                to_create.append(
                    Annotation(
                        image_id=image_id,
                        face_id=face_id,
                        category_id=category_id,
                        value=value,
                        source=source,
                        user_id=user_id,
                        updated_at=now,
                    )
                )
            elif value is None:
                to_delete.append(row.pk)
            else:
                row.value, row.source, row.user_id, row.updated_at = value, source, user_id, now
                to_update.append(row)
            events.append(
                AnnotationEvent(
                    image_id=image_id,
                    face_id=face_id,
                    category_id=category_id,
                    category_name=category.name,
                    old_value=old,
                    new_value=value,
                    source=source,
                    user_id=user_id,
                    created_at=now,
                )
            )
        if to_create:
            Annotation.objects.bulk_create(to_create)
        # One UPDATE per new value (at most three) instead of bulk_update's CASE per row.
        for value in {row.value for row in to_update}:
            Annotation.objects.filter(pk__in=[r.pk for r in to_update if r.value == value]).update(
                value=value, source=source, user_id=user_id, updated_at=now
            )
        if to_delete:
            Annotation.objects.filter(pk__in=to_delete).delete()
        if events:
            AnnotationEvent.objects.bulk_create(events)
    result.created, result.updated, result.removed = len(to_create), len(to_update), len(to_delete)
    return result


def delete_category(category: Category, *, user=None) -> int:
    """Delete a category; each of its labels is first archived as a removal event."""
    now = timezone.now()
    user_id = user.pk if user is not None and user.is_authenticated else None
    with transaction.atomic():
        rows = list(
            Annotation.objects.filter(category=category).values_list("image_id", "face_id", "value")
        )
        AnnotationEvent.objects.bulk_create(
            (
                AnnotationEvent(
                    image_id=image_id,
                    face_id=face_id,
                    category_id=category.pk,
                    category_name=category.name,
                    old_value=value,
                    new_value=None,
                    source=Source.DELETE,
                    user_id=user_id,
                    created_at=now,
                )
                for image_id, face_id, value in rows
            ),
            batch_size=2000,
        )
        category.delete()
    return len(rows)
