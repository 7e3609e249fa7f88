"""Face crops in the label grid: pages of a person's faces, of one cluster, or by label.

The face pages reuse the grid component (``_grid.html`` + ``grid.js``, see
:mod:`annotation.grid`): an item's ``key`` is the face id, ``thumb`` the face crop and
``full`` the whole image. Items also carry ``box`` ([x1, y1, x2, y2] in image pixels)
and ``size`` ([width, height]) so ``static/annotation/faces.js`` can show the whole
image with the face framed when the pointer rests on a crop.

A person has a few thousand faces at most (those of the images acquired for it), so
plain ``OFFSET`` paging is fast enough here; each page costs a count and one query for
the rows, with the label read through the unique (category, face) index.
"""

from __future__ import annotations

from django.db.models import OuterRef, QuerySet, Subquery

from viva.media import media_url

from .clustering import person_faces
from .grid import GridItem, GridPage
from .models import Annotation, Category, FaceCluster, FaceClusterMember, Label, Source

_FACE_FIELDS = (
    "thumbnail",
    "box",
    "score",
    "image_id",
    "image__file",
    "image__thumbnail",
    "image__width",
    "image__height",
    "image__original_name",
    "image__video__title",
)


def _label(category_id: int, face_ref: str = "pk") -> Subquery:
    return Subquery(
        Annotation.objects.filter(category_id=category_id, face_id=OuterRef(face_ref)).values(
            "value"
        )[:1]
    )


def face_item(row: dict, prefix: str, label: int | None, extra: str = "") -> GridItem:
    """One grid cell from a ``values()`` row whose face columns start with ``prefix``."""
    image_file = row[prefix + "image__file"]
    caption = (
        row[prefix + "image__original_name"]
        or row[prefix + "image__video__title"]
        or f"Image {row[prefix + 'image_id']}"
    )
    item: GridItem = {
        "key": str(row[prefix + "id"]),
        "thumb": media_url(row[prefix + "thumbnail"] or row[prefix + "image__thumbnail"]),
        "full": media_url(image_file),
        "caption": caption,
        "label": label,
    }
    item["box"] = [round(float(v), 1) for v in (row[prefix + "box"] or [])][:4]  # type: ignore[typeddict-unknown-key]
    item["size"] = [row[prefix + "image__width"], row[prefix + "image__height"]]  # type: ignore[typeddict-unknown-key]
    if extra:
        item["extra"] = extra
    return item


def _page(
    qs: QuerySet, order: tuple[str, ...], page: int, per_page: int
) -> tuple[list[dict], int, bool, int]:
    """Rows of page ``page`` (clamped to the last page), its number, more?, and the count."""
    total = qs.count()
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    start = (page - 1) * per_page
    rows = list(qs.order_by(*order)[start : start + per_page + 1])
    has_next = len(rows) > per_page
    return rows[:per_page], page, has_next, total


def faces_page(
    category: Category,
    *,
    cluster: FaceCluster | None = None,
    page: int = 1,
    per_page: int = 24,
    unlabelled_only: bool = False,
) -> GridPage:
    """Faces of the person's acquired images (or of one cluster, most typical first)."""
    if cluster is not None:
        qs = FaceClusterMember.objects.filter(cluster=cluster).annotate(
            current=_label(category.pk, "face_id")
        )
        if unlabelled_only:
            qs = qs.filter(current__isnull=True)
        qs = qs.values("current", "distance", "face_id", *(f"face__{f}" for f in _FACE_FIELDS))
        rows, number, has_next, total = _page(qs, ("distance", "face_id"), page, per_page)
        items = []
        for row in rows:
            row["face__id"] = row["face_id"]
            extra = f"distance {row['distance']:.2f}"
            items.append(face_item(row, "face__", row["current"], extra))
    else:
        qs = person_faces(category).annotate(current=_label(category.pk))
        if unlabelled_only:
            qs = qs.filter(current__isnull=True)
        qs = qs.values("id", "current", *_FACE_FIELDS)
        rows, number, has_next, total = _page(qs, ("image_id", "id"), page, per_page)
        items = [face_item(row, "", row["current"], f"score {row['score']:.2f}") for row in rows]
    return GridPage(items, number, per_page, total, next_cursor="" if has_next else None)


def face_label_counts(category: Category) -> dict[int, int]:
    """How many faces of ``category`` are labelled positive / negative / neutral."""
    from django.db.models import Count

    rows = (
        Annotation.objects.filter(category=category, face__isnull=False)
        .values("value")
        .annotate(n=Count("pk"))
    )
    counts = {int(v): 0 for v in Label.values}
    counts.update({r["value"]: r["n"] for r in rows})
    return counts


def face_review_page(category: Category, value: int, *, page: int = 1, per_page: int = 24):
    """Faces labelled ``value`` for ``category``, newest label first."""
    qs = Annotation.objects.filter(category=category, face__isnull=False, value=value).values(
        "value", "source", "user__username", "face_id", *(f"face__{f}" for f in _FACE_FIELDS)
    )
    rows, number, has_next, total = _page(qs, ("-updated_at", "id"), page, per_page)
    sources = dict(Source.choices)
    items = []
    for row in rows:
        row["face__id"] = row["face_id"]
        who = row["user__username"] or "—"
        extra = f"{who} · {sources.get(row['source'], row['source']).lower()}"
        items.append(face_item(row, "face__", row["value"], extra))
    return GridPage(items, number, per_page, total, next_cursor="" if has_next else None)
