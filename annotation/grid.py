"""The grid's server side: page queries and the dict the ``_grid.html`` component renders.

Every labelling, review, retrieval and acquisition page shows its images through
``templates/annotation/_grid.html``; this module builds what that template needs.

**The contract** (other pages rely on it; see :class:`GridSpec`)::

    grid = GridSpec(items=[...], save_url=..., category_id=..., source=..., page={...},
                    rows=4, cols=6, prefs_url=..., readonly=False).as_dict()
    {% include "annotation/_grid.html" with grid=grid %}

Each item is a dict: ``key`` (str: an image id, or e.g. a crawler result key),
``thumb`` and ``full`` (URLs), ``caption``, ``label`` (1 / -1 / 0 / None), and optionally
``video`` (``{"src", "start", "end"}`` in seconds), ``extra`` (short text),
``similar_url`` and ``link``. The browser posts changed labels as one JSON batch to
``save_url`` (see :mod:`annotation.views.label_api`).

**Queries.** A page costs a constant number of queries whatever its size (about 8
per page view with session and user): the count, the page's primary keys, and the
rows by key — as ``values()`` joined to video and shot, with the label as a subquery
on the unique (category, image) index or read from the annotation itself. At archive
scale (DESIGN.md section 7: 1 M images, 5 M annotations) these would be slow, and are
avoided:

* Sorting and deep ``OFFSET``. Each list is ordered the way an index already stores
  it: candidates ``(added_at DESC, id)`` on ``candidate_recent``, review
  ``(updated_at DESC, id)`` on the partial ``annotation_review`` index, archive ``id``
  (ascending id as the tie-breaker is the rowid order inside a SQLite index). The
  keys step reads only the index, so even ``OFFSET`` 300,000 costs ~15 ms; the rows
  step then loads just the page. Lists that cannot skip rows cheaply — an id scan of
  the whole image table, "unlabelled" anti-joins — jump to deep pages from cached
  *anchors* (every 1,000th key, :func:`_anchors`).
* Paging forwards (``s``/``d``, "next") uses a keyset cursor (``after=``) instead of a
  page offset: it is O(page) at any depth, and it keeps pages stable while labels
  change — after saving a page of "unlabelled" candidates or correcting a review
  page, those rows leave the list, and the next page starts right after the last row
  seen instead of skipping the rows that moved up.
* ``COUNT(*)`` of a huge set on every view. A count that took longer than
  :data:`SLOW_COUNT_SECONDS` is cached for :data:`COUNT_CACHE_SECONDS` (Django's
  cache; settings ``VIVA_GRID_SLOW_COUNT_SECONDS`` / ``VIVA_GRID_CACHE_SECONDS``) and
  the page then says "about N" (``page["approximate"]``). Small sets are counted
  exactly every time. "Unlabelled" archive images are counted as images minus labels
  (two index counts), not with an anti-join.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict
from urllib.parse import urlencode

from django.conf import settings
from django.core.cache import cache
from django.db import connections
from django.db.models import DateTimeField, Exists, OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from viva.media import media_url
from viva.models import Image, Profile

from .models import Annotation, Candidate, Category, Source

__all__ = [
    "COUNT_CACHE_SECONDS",
    "DEFAULT_COLS",
    "DEFAULT_ROWS",
    "MAX_SIZE",
    "GridItem",
    "GridPage",
    "GridSpec",
    "archive_page",
    "candidate_page",
    "grid_size",
    "image_item",
    "images_page",
    "label_counts",
    "naive_page_items",
    "page_links",
    "parse_page_args",
    "review_page",
    "save_grid_size",
]

MIN_SIZE, MAX_SIZE = 1, 10
DEFAULT_ROWS, DEFAULT_COLS = 4, 6
# Counts slower than this are cached this long; anchors live as long. Settings
# VIVA_GRID_SLOW_COUNT_SECONDS / VIVA_GRID_CACHE_SECONDS override them (tests use that).
SLOW_COUNT_SECONDS = 0.05
COUNT_CACHE_SECONDS = 60
ANCHOR_EVERY = 1000
SHOT_PADDING_S = 2.0  # keyframes without a shot play this long around their moment
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class GridItem(TypedDict, total=False):
    key: str
    thumb: str
    full: str
    caption: str
    label: int | None
    video: dict[str, Any]
    extra: str
    similar_url: str
    link: str


@dataclass
class GridSpec:
    """Everything ``_grid.html`` and ``grid.js`` need; ``as_dict()`` is the contract.

    ``save_next_url`` (optional) is where ``s`` goes after a successful save; it
    defaults to ``page["next_url"]``. ``empty_message`` is shown when there are no items.
    """

    items: list[GridItem]
    save_url: str
    category_id: int | None
    source: str
    page: dict[str, Any]
    rows: int = DEFAULT_ROWS
    cols: int = DEFAULT_COLS
    prefs_url: str = ""
    readonly: bool = False
    save_next_url: str | None = None
    empty_message: str = "Nothing to show here."

    def as_dict(self) -> dict[str, Any]:
        # Shallow on purpose: dataclasses.asdict deep-copies every item (slow for 100).
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if data["save_next_url"] is None:
            data["save_next_url"] = self.page.get("next_url")
        return data


@dataclass
class GridPage:
    """One page of items as the query service returns it, before URLs are attached."""

    items: list[GridItem]
    number: int
    per_page: int
    total: int
    approximate: bool = False
    next_cursor: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_pages(self) -> int:
        pages = max(1, math.ceil(self.total / self.per_page)) if self.per_page else 1
        if self.next_cursor and pages <= self.number:
            pages = self.number + 1  # a cached count may lag behind new rows
        return pages


# --------------------------------------------------------------------------- sizes


def _clamp(value: Any, default: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return min(MAX_SIZE, max(MIN_SIZE, number))


def grid_size(user) -> tuple[int, int]:
    """Rows and columns the user chose last (Profile.grid_rows/grid_cols); one query."""
    row = Profile.objects.filter(user_id=user.pk).values_list("grid_rows", "grid_cols").first()
    if row is None:
        return DEFAULT_ROWS, DEFAULT_COLS
    return _clamp(row[0], DEFAULT_ROWS), _clamp(row[1], DEFAULT_COLS)


def save_grid_size(user, rows: Any, cols: Any) -> tuple[int, int]:
    """Store rows × columns (each clamped to 1–10) in the user's profile."""
    rows, cols = _clamp(rows, DEFAULT_ROWS), _clamp(cols, DEFAULT_COLS)
    updated = Profile.objects.filter(user_id=user.pk).update(grid_rows=rows, grid_cols=cols)
    if not updated:
        Profile.objects.create(user=user, grid_rows=rows, grid_cols=cols)
    return rows, cols


# --------------------------------------------------------------------------- items


def _fmt_time(ms: int | None) -> str:
    if ms is None:
        return ""
    seconds = ms // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _Links:
    """URL prefixes reversed once per page instead of once per item."""

    def __init__(self) -> None:
        self.video = reverse("archive:video", args=[987654321]).replace("987654321", "{}")
        try:
            self.similar: str | None = reverse("annotation:similar")
        except NoReverseMatch:  # the similarity page is another issue's; link when it exists
            self.similar = None


def image_item(
    image: Image,
    label: int | None,
    *,
    extra: str = "",
    links: _Links | None = None,
) -> GridItem:
    """The grid dict for one archive image (``image.video``/``image.shot`` preloaded)."""
    video = image.video if image.video_id else None
    shot = image.shot if image.shot_id else None
    row = {
        "id": image.pk,
        "file": image.file,
        "thumbnail": image.thumbnail,
        "original_name": image.original_name,
        "time_ms": image.time_ms,
        "video_id": image.video_id,
        "video__title": video.title if video else "",
        "video__file": video.file if video else "",
        "shot_id": image.shot_id,
        "shot__start_ms": shot.start_ms if shot else None,
        "shot__end_ms": shot.end_ms if shot else None,
    }
    return _item(row, "", label, extra, links or _Links())


# Columns of an image row a grid cell needs (``values()`` rows, no model instances:
# building five model objects per cell cost more than the queries).
_ROW_FIELDS = (
    "id",
    "file",
    "thumbnail",
    "original_name",
    "time_ms",
    "video_id",
    "video__title",
    "video__file",
    "shot_id",
    "shot__start_ms",
    "shot__end_ms",
)


def _item(row: dict, prefix: str, label: int | None, extra: str, links: _Links) -> GridItem:
    """Build one cell from a ``values()`` row whose image columns start with ``prefix``."""
    pk = row[prefix + "id"]
    file = row[prefix + "file"]
    item: GridItem = {
        "key": str(pk),
        "thumb": media_url(row[prefix + "thumbnail"] or file),
        "full": media_url(file),
        "label": label,
    }
    video_id = row[prefix + "video_id"]
    if video_id:
        time_ms = row[prefix + "time_ms"]
        item["caption"] = f"{row[prefix + 'video__title']} · {_fmt_time(time_ms)}"
        if row[prefix + "shot_id"]:
            start, end = row[prefix + "shot__start_ms"] / 1000, row[prefix + "shot__end_ms"] / 1000
        else:
            moment = (time_ms or 0) / 1000
            start, end = max(0.0, moment - SHOT_PADDING_S), moment + SHOT_PADDING_S
        item["video"] = {"src": media_url(row[prefix + "video__file"]), "start": start, "end": end}
        item["link"] = links.video.format(video_id)
    else:
        item["caption"] = row[prefix + "original_name"] or f"Image {pk}"
    if extra:
        item["extra"] = extra
    if links.similar:
        item["similar_url"] = f"{links.similar}?image={pk}"
    return item


def _label_subquery(category_id: int, image_ref: str) -> Subquery:
    """The current image-level label of the outer row's image, via the unique index."""
    return Subquery(
        Annotation.objects.filter(
            category_id=category_id, face__isnull=True, image_id=OuterRef(image_ref)
        ).values("value")[:1]
    )


def _unlabelled(category_id: int, image_ref: str) -> Exists:
    return Exists(
        Annotation.objects.filter(
            category_id=category_id, face__isnull=True, image_id=OuterRef(image_ref)
        )
    )


# --------------------------------------------------------------------------- paging


def _encode_ts(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _decode_ts(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _parse_cursor(raw: str | None, parts: int) -> tuple[int, ...] | None:
    """``"1712345678901234_42"`` → ``(1712345678901234, 42)``; garbage → ``None``."""
    if not raw:
        return None
    try:
        values = tuple(int(p) for p in raw.split("_"))
    except ValueError:
        return None
    return values if len(values) == parts else None


@dataclass
class _Listing:
    """One list the grid pages through: filtered rows, their order, how to cache.

    ``order`` is the sort key, a leading column and ``id`` as tie-breaker, e.g.
    ``("-added_at", "id")``: descending time, then *ascending* id, which is the order
    the rows already have inside a SQLite index on (…, time DESC) (the rowid comes last,
    ascending), so neither the page nor a deep ``OFFSET`` needs a sort.
    ``anchored`` lists (table scans, anti-joins) jump to deep pages through cached
    anchors instead of a long ``OFFSET``; lists read from a covering index skip their
    ``OFFSET`` fast enough (about 50 ns a row) to stay exact.
    """

    qs: QuerySet
    order: tuple[str, ...]
    key: str
    anchored: bool = False
    total: tuple[int, bool] | None = None
    # The same rows for the page-key queries (LIMIT), when another spelling plans
    # better there than for the counts and the anchor scan (see images_page).
    keys_qs: QuerySet | None = None


def _order_values(obj: Any, order: tuple[str, ...]) -> tuple[int, ...]:
    values = []
    for name in order:
        value = getattr(obj, name.lstrip("-"))
        values.append(_encode_ts(value) if isinstance(value, datetime) else int(value))
    return tuple(values)


def _cursor_text(values: tuple[int, ...]) -> str:
    return "_".join(str(v) for v in values)


def _after(qs: QuerySet, order: tuple[str, ...], values: tuple[int, ...]) -> QuerySet:
    """Rows strictly after ``values`` in ``order`` (keyset / seek pagination).

    For ``("-t", "id")``: ``t <= T AND NOT (t = T AND id <= I)`` rather than an OR, so
    the range on the indexed column drives the scan on SQLite and PostgreSQL alike.
    """
    names = [name.lstrip("-") for name in order]
    decoded = [
        _decode_ts(v) if isinstance(qs.model._meta.get_field(n), DateTimeField) else v
        for n, v in zip(names, values, strict=True)
    ]
    descending = order[0].startswith("-")
    if len(order) == 1:
        return qs.filter(**{f"{names[0]}__{'lt' if descending else 'gt'}": decoded[0]})
    lead = {f"{names[0]}__{'lte' if descending else 'gte'}": decoded[0]}
    return qs.filter(**lead).exclude(**{names[0]: decoded[0], f"{names[1]}__lte": decoded[1]})


def _slow_seconds() -> float:
    return float(getattr(settings, "VIVA_GRID_SLOW_COUNT_SECONDS", SLOW_COUNT_SECONDS))


def _cache_seconds() -> int:
    return int(getattr(settings, "VIVA_GRID_CACHE_SECONDS", COUNT_CACHE_SECONDS))


def _counted(qs: QuerySet, key: str) -> tuple[int, bool]:
    """``qs.count()``, cached when it was slow (see the module docstring)."""
    cached = cache.get(key)
    if cached is not None:
        return int(cached), True
    started = time.perf_counter()
    total = qs.count()
    if time.perf_counter() - started > _slow_seconds():
        cache.set(key, total, _cache_seconds())
    return total, False


def _anchors(listing: _Listing) -> list[int]:
    """Primary keys of every :data:`ANCHOR_EVERY`-th row of the list, cached.

    One pass over the list's keys (about 0.6 s per million rows on SQLite), at most
    once per :data:`COUNT_CACHE_SECONDS`; it also refreshes the cached count. Anchors
    may drift by the rows added or labelled since they were taken — a deep page jump
    is then off by that many rows, never empty or duplicated within the page.
    """
    key = listing.key + ":anchors"
    anchors = cache.get(key)
    if anchors is not None:
        return anchors
    ordered = listing.qs.order_by(*listing.order).values_list("pk")
    sql, params = ordered.query.sql_with_params()
    anchors, seen = [], 0
    with connections[ordered.db].cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(20000):
            first = (ANCHOR_EVERY - 1 - seen % ANCHOR_EVERY) % ANCHOR_EVERY
            anchors.extend(row[0] for row in rows[first::ANCHOR_EVERY])
            seen += len(rows)
    cache.set(key, anchors, _cache_seconds())
    cache.set(listing.key, seen, _cache_seconds())
    return anchors


def _page_keys(
    listing: _Listing, *, number: int, per_page: int, after: str | None
) -> tuple[list[int], int, int, bool]:
    """Primary keys of one page plus a look-ahead key: ``(pks, number, total, approx)``.

    Index-only work: the rows themselves are loaded afterwards by primary key, so a
    deep page never drags joins and label subqueries through the skipped rows.
    """
    total, approximate = listing.total or _counted(listing.qs, listing.key)
    if total == 0 and not approximate:
        return [], 1, 0, False  # proven empty: do not scan for rows that cannot exist
    keys_qs = listing.keys_qs if listing.keys_qs is not None else listing.qs
    ordered = keys_qs.order_by(*listing.order)
    cursor = _parse_cursor(after, len(listing.order))
    if cursor is not None:
        return (
            list(
                _after(ordered, listing.order, cursor).values_list("pk", flat=True)[: per_page + 1]
            ),
            number,
            total,
            approximate,
        )
    pages = max(1, math.ceil(total / per_page))
    number = min(max(1, number), pages)
    offset = (number - 1) * per_page
    if listing.anchored and offset >= ANCHOR_EVERY:
        anchors = _anchors(listing)
        block = offset // ANCHOR_EVERY
        if block - 1 < len(anchors):
            anchor = (
                listing.qs.model._default_manager.filter(pk=anchors[block - 1])
                .only(*(f.lstrip("-") for f in listing.order))
                .first()
            )
            if anchor is not None:
                start = offset - block * ANCHOR_EVERY
                seek = _after(ordered, listing.order, _order_values(anchor, listing.order))
                pks = list(seek.values_list("pk", flat=True)[start : start + per_page + 1])
                return pks, number, total, True
    pks = list(ordered.values_list("pk", flat=True)[offset : offset + per_page + 1])
    return pks, number, total, approximate


def _rows(
    qs: QuerySet, pks: list[int], per_page: int, order: tuple[str, ...], *fields: str
) -> tuple[list[dict], str | None]:
    """The page's rows as dicts in key order (one query) and the "next" cursor.

    ``pks`` carries one look-ahead key: when present there is a next page, and the
    cursor is the sort key of the page's last row.
    """
    names = [name.lstrip("-") for name in order]
    wanted = pks[:per_page]
    columns = dict.fromkeys(("id", *names, *fields))
    by_pk = {row["id"]: row for row in qs.filter(pk__in=wanted).values(*columns)}
    rows = [by_pk[pk] for pk in wanted if pk in by_pk]
    if len(pks) <= per_page or not rows:
        return rows, None
    last = rows[-1]
    values = tuple(
        _encode_ts(last[n]) if isinstance(last[n], datetime) else int(last[n]) for n in names
    )
    return rows, _cursor_text(values)


def candidate_page(
    category: Category,
    *,
    page: int = 1,
    per_page: int = 24,
    unlabelled_only: bool = True,
    after: str | None = None,
) -> GridPage:
    """A page of the category's candidates, newest first, with their current labels.

    Queries: the count (cached when slow), the page's keys on the ``candidate_recent``
    index (with an anti-join for "unlabelled"), the rows by key joined to image, video
    and shot with the label as a subquery.
    """
    base = Candidate.objects.filter(category_id=category.pk)
    if unlabelled_only:
        base = base.filter(~_unlabelled(category.pk, "image_id"))
    order = ("-added_at", "id")
    listing = _Listing(
        base,
        order,
        f"viva:grid:cand:{category.pk}:{int(unlabelled_only)}",
        anchored=unlabelled_only,
    )
    pks, number, total, approximate = _page_keys(
        listing, number=page, per_page=per_page, after=after
    )
    rows_qs = Candidate.objects.annotate(current=_label_subquery(category.pk, "image_id"))
    rows, cursor = _rows(
        rows_qs,
        pks,
        per_page,
        order,
        "score",
        "source",
        "current",
        *(f"image__{f}" for f in _ROW_FIELDS),
    )
    links = _Links()
    items = []
    for row in rows:
        extra = ""
        if row["score"] is not None:
            what = "distance" if row["source"] == Source.SIMILARITY else "score"
            extra = f"{what} {row['score']:.3g}"
        items.append(_item(row, "image__", row["current"], extra, links))
    return GridPage(items, number, per_page, total, approximate, cursor)


def label_counts(category: Category) -> tuple[dict[int, int], bool]:
    """Image-level positive/negative/neutral counts of one category.

    Three range counts on the partial ``annotation_review`` index: on SQLite they are
    about twice as fast as one ``GROUP BY value`` over the same entries. Cached like a
    slow count. Returns ``({value: n}, approximate)``.
    """
    key = f"viva:grid:counts:{category.pk}"
    cached = cache.get(key)
    if cached is not None:
        return dict(cached), True
    started = time.perf_counter()
    base = Annotation.objects.filter(category_id=category.pk, face__isnull=True)
    counts = {value: base.filter(value=value).count() for value in (1, -1, 0)}
    if time.perf_counter() - started > _slow_seconds():
        cache.set(key, counts, _cache_seconds())
    return counts, False


def review_page(
    category: Category,
    value: int,
    *,
    page: int = 1,
    per_page: int = 24,
    after: str | None = None,
    total: tuple[int, bool] | None = None,
) -> GridPage:
    """A page of the images labelled ``value`` for ``category``, newest label first.

    Keys come from the partial ``annotation_review`` index (category, value,
    updated_at DESC, id) — exact ``OFFSET`` even deep down; the annotation rows carry
    the label themselves. ``total`` — ``(count, approximate)`` — skips the count when
    the caller has it already (the review page gets all three from :func:`label_counts`).
    """
    base = Annotation.objects.filter(category_id=category.pk, value=value, face__isnull=True)
    order = ("-updated_at", "id")
    listing = _Listing(base, order, f"viva:grid:review:{category.pk}:{value}", total=total)
    pks, number, total_n, approximate = _page_keys(
        listing, number=page, per_page=per_page, after=after
    )
    rows, cursor = _rows(
        Annotation.objects.all(),
        pks,
        per_page,
        order,
        "value",
        "source",
        "user__username",
        *(f"image__{f}" for f in _ROW_FIELDS),
    )
    links = _Links()
    sources = dict(Source.choices)
    items = []
    for row in rows:
        who = row["user__username"] or "—"
        extra = f"{who} · {sources.get(row['source'], row['source']).lower()}"
        items.append(_item(row, "image__", row["value"], extra, links))
    return GridPage(items, number, per_page, total_n, approximate, cursor)


def images_page(
    images: QuerySet,
    category: Category,
    *,
    page: int = 1,
    per_page: int = 24,
    after: str | None = None,
    unlabelled_only: bool = False,
    count_key: str | None = None,
    total: tuple[int, bool] | None = None,
) -> GridPage:
    """A page of any image queryset in ascending id order with labels for ``category``.

    Used by the archive tab of the label page; other apps can pass their own
    queryset (it is re-ordered by id so the keyset cursor works). Deep pages use
    cached anchors (an id-ordered scan of a big table, or an anti-join, cannot skip
    rows cheaply).
    """
    base = keys = images
    if unlabelled_only:
        base = base.filter(~_unlabelled(category.pk, "pk"))
        # PostgreSQL plans NOT EXISTS under "id > anchor ORDER BY id LIMIT" as a merge
        # anti-join reading the category's labels from the first image on (0.3–8 s at
        # 1 M images); a scalar subquery stays one index probe per row.
        keys = images.alias(
            _label_pk=Subquery(
                Annotation.objects.filter(
                    category_id=category.pk, face__isnull=True, image_id=OuterRef("pk")
                ).values("pk")[:1]
            )
        ).filter(_label_pk__isnull=True)
    if count_key is None:
        digest = hashlib.sha1(str(base.query).encode(), usedforsecurity=False).hexdigest()
        count_key = f"viva:grid:images:{category.pk}:{digest}"
    order = ("id",)
    listing = _Listing(base, order, count_key, anchored=True, total=total, keys_qs=keys)
    pks, number, total_n, approximate = _page_keys(
        listing, number=page, per_page=per_page, after=after
    )
    rows_qs = Image.objects.annotate(current=_label_subquery(category.pk, "pk"))
    rows, cursor = _rows(rows_qs, pks, per_page, order, "current", *_ROW_FIELDS)
    links = _Links()
    items = [_item(row, "", row["current"], "", links) for row in rows]
    return GridPage(items, number, per_page, total_n, approximate, cursor)


def archive_page(
    category: Category,
    *,
    collection_id: int | None = None,
    video_id: int | None = None,
    page: int = 1,
    per_page: int = 24,
    after: str | None = None,
    unlabelled_only: bool = False,
) -> GridPage:
    """Archive images (optionally of one collection / video) to label directly.

    Without filters, "unlabelled" is counted as all images minus the category's
    image-level labels (two index counts) instead of an anti-join over every image.
    """
    images = Image.objects.all()
    if collection_id:
        images = images.filter(collection_id=collection_id)
    if video_id:
        images = images.filter(video_id=video_id)
    key = (
        f"viva:grid:archive:{category.pk}:{collection_id or 0}:{video_id or 0}:"
        f"{int(unlabelled_only)}"
    )
    total = None
    if unlabelled_only and not collection_id and not video_id and cache.get(key) is None:
        labelled = Annotation.objects.filter(category_id=category.pk, face__isnull=True)
        total = (
            max(
                0,
                _counted(images, "viva:grid:archive:all")[0]
                - _counted(labelled, f"viva:grid:labelled:{category.pk}")[0],
            ),
            False,
        )
    return images_page(
        images,
        category,
        page=page,
        per_page=per_page,
        after=after,
        unlabelled_only=unlabelled_only,
        count_key=key,
        total=total,
    )


def naive_page_items(
    images: QuerySet, category: Category, *, page: int = 1, per_page: int = 24
) -> list[GridItem]:
    """A straightforward page: OFFSET paging and one label query per image.

    How a simple implementation (and the original VIVA) builds a page; kept so tests
    and the benchmark can compare ours with it.
    """
    start = (max(1, page) - 1) * per_page
    links = _Links()
    items = []
    for image in images.select_related("video", "shot").order_by("id")[start : start + per_page]:
        ann = Annotation.objects.filter(category=category, image=image, face__isnull=True).first()
        items.append(image_item(image, ann.value if ann else None, links=links))
    return items


# --------------------------------------------------------------------------- URLs


def parse_page_args(request: HttpRequest) -> tuple[int, str | None]:
    """``page`` (≥ 1) and the keyset cursor ``after`` from the query string."""
    try:
        number = max(1, int(request.GET.get("page", "1")))
    except ValueError:
        number = 1
    return number, request.GET.get("after") or None


def page_links(request: HttpRequest, grid_page: GridPage, window: int = 2) -> dict[str, Any]:
    """The ``page`` dict of the contract: numbers, total and URLs that keep other filters."""
    params = {k: v for k, v in request.GET.items() if k not in ("page", "after")}

    def url(number: int, after: str | None = None) -> str:
        query = dict(params, page=str(number))
        if after:
            query["after"] = after
        return request.path + "?" + urlencode(query)

    number, pages = grid_page.number, grid_page.num_pages
    shown = {1, pages, *range(number - window, number + window + 1)}
    page_urls = [(n, url(n)) for n in sorted(shown) if 1 <= n <= pages]
    has_next = grid_page.next_cursor is not None
    first = (number - 1) * grid_page.per_page
    return {
        "number": number,
        "num_pages": pages,
        "total": grid_page.total,
        "approximate": grid_page.approximate,
        "per_page": grid_page.per_page,
        "first_index": first + 1 if grid_page.items else 0,
        "last_index": first + len(grid_page.items),
        "prev_url": url(number - 1) if number > 1 else None,
        "next_url": url(number + 1, grid_page.next_cursor) if has_next else None,
        "current_url": request.get_full_path(),
        "page_urls": page_urls,
    }
