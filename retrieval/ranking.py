"""Ranked retrieval and combined queries over the published inference run.

**Ranked list** (one category): predictions of the published run read in the order of
the ``prediction_rank`` index (run, category, score DESC; the rowid/id ascending breaks
ties), so the top of a list with millions of rows costs an index range scan. A page is a
constant number of queries, as in :mod:`annotation.grid`: the count (cached when slow;
for lists with join/subquery filters it stops at :data:`COUNT_CAP` and says "about"),
the page's prediction keys (offset, or a keyset cursor ``after=<score>_<id>`` for "next"),
and the rows by key joined to image, video and shot with the current label as a subquery.
Ascending order reads the same index backwards (score ASC, id DESC).

Filters: minimum score (a range on the index), hide images already labelled for the
category (anti-join on the unique (category, image) annotation index), collection, video
title (contains, case-insensitive), year range. *Group by shot* keeps the best keyframe
of each shot — the prediction for which no keyframe of the same shot scores higher
(ties: lower prediction id wins) — computed on all predictions of the category, before
the other filters (a shot whose best keyframe is labelled disappears with "hide labelled").

**Combined query** (:class:`retrieval.query.Query`): terms ``score(c) >= min`` joined by
AND / OR / NOT, plus the same metadata filters. Semantics, with ``s_c`` the image's score
for category ``c`` in the published run of the term's kind (concept or person):

* an image qualifies when every AND term holds, at least one OR term holds (if there are
  OR terms), and no NOT term holds (NOT = "not predicted at or above its min score");
* its score is ``min(min over AND terms of s_c, max over OR terms of s_c)`` — fuzzy AND
  is the minimum, fuzzy OR the maximum; NOT terms filter only;
* a query needs at least one AND or OR term (NOT alone ranks nothing).

It is one SQL statement: the predictions of the positive terms (each an index range of
``prediction_rank``) grouped by image, the NOT terms as ``NOT EXISTS`` on the
``prediction_image`` index, metadata joined afterwards, ordered by the combined score.
A page reads the whole ordered list once (up to :data:`MAX_LISTED` rows; its length is
the count; cached when slow, so further pages are free) and then the page's rows.
Cost: every range row needs ``image_id``, which ``prediction_rank`` does not hold, so
SQLite looks each one up in the table (≈ 0.7 s for two 50,000-row ranges at 10 M
predictions, cold). With ``image`` appended to ``prediction_rank`` the ranges are
index-only (measured: p50 0.28 s, p95 0.46 s; a change to ``retrieval.models``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache
from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet

from annotation.grid import (
    _ROW_FIELDS,
    GridPage,
    _cache_seconds,
    _counted,
    _item,
    _label_subquery,
    _Links,
    _slow_seconds,
    _unlabelled,
)
from annotation.models import Annotation, Category
from viva.models import Image, Video

from .models import InferenceRun, Prediction
from .query import Filters, Query

__all__ = [
    "CombinedSQL",
    "Hit",
    "QueryError",
    "category_hits",
    "combined_hits",
    "combined_page",
    "combined_sql",
    "published_run",
    "published_runs",
    "ranked_page",
    "ranked_queryset",
]


# Filtered ranked lists are counted up to this many rows (see :func:`_capped_count`).
COUNT_CAP = 5000


class QueryError(ValueError):
    """A query that cannot run, with a message for the user."""


def published_run(kind: str = "concept") -> InferenceRun | None:
    """The published inference run whose model is of ``kind`` (one query)."""
    return InferenceRun.objects.filter(is_published=True, kind=kind).first()


def published_runs() -> dict[str, InferenceRun]:
    """Published runs by model kind (``{"concept": run, "person": run}``), one query."""
    return {run.kind: run for run in InferenceRun.objects.filter(is_published=True)}


def _score_text(score: float) -> str:
    return f"score {score:.2f}"


def _digest(*parts: Any) -> str:
    return hashlib.sha1(repr(parts).encode(), usedforsecurity=False).hexdigest()[:20]


# --------------------------------------------------------------------------- ranked list


def _metadata_q(filters: Filters, prefix: str) -> Q:
    q = Q()
    if filters.collection_id:
        q &= Q(**{f"{prefix}collection_id": filters.collection_id})
    if filters.title:
        q &= Q(**{f"{prefix}video__title__icontains": filters.title})
    if filters.year_from is not None:
        q &= Q(**{f"{prefix}video__year__gte": filters.year_from})
    if filters.year_to is not None:
        q &= Q(**{f"{prefix}video__year__lte": filters.year_to})
    return q


def ranked_queryset(
    run_id: int, category_id: int, filters: Filters, *, face_labels: bool = False
) -> QuerySet:
    """Predictions of one category in one run, filtered (not ordered).

    ``face_labels``: a person's results are labelled on their recognised face, so "hide
    labelled" looks at the face's label instead of the image's.
    """
    qs = Prediction.objects.filter(run_id=run_id, category_id=category_id)
    if filters.min_score is not None:
        qs = qs.filter(score__gte=filters.min_score)
    if filters.needs_metadata:
        qs = qs.filter(_metadata_q(filters, "image__"))
    if filters.hide_labelled and face_labels:
        labelled_face = Annotation.objects.filter(
            category_id=category_id, face_id=OuterRef("face_id")
        )
        qs = qs.filter(~Exists(labelled_face))
    elif filters.hide_labelled:
        qs = qs.filter(~_unlabelled(category_id, "image_id"))
    if filters.group_by_shot:
        better = Prediction.objects.filter(
            run_id=run_id,
            category_id=category_id,
            image__shot_id=OuterRef("image__shot_id"),
        ).filter(Q(score__gt=OuterRef("score")) | Q(score=OuterRef("score"), id__lt=OuterRef("id")))
        qs = qs.filter(~Exists(better))
    return qs


def _capped_count(qs: QuerySet, key: str) -> tuple[int, bool]:
    """Count at most :data:`COUNT_CAP` rows (then ``(COUNT_CAP, True)``: "about").

    Filtered lists check every row against a join or a subquery; counting 100,000 of
    them cost 0.5–4 s cold at 10 M predictions, so the count stops at the cap (the
    page then says "about"; "next" pages on with the keyset cursor past it).
    """
    cached = cache.get(key)
    if cached is not None:
        return int(cached), True
    started = time.perf_counter()
    total = qs.order_by()[: COUNT_CAP + 1].count()
    if total > COUNT_CAP:
        total = COUNT_CAP
        cache.set(key, total, _cache_seconds())
        return total, True
    if time.perf_counter() - started > _slow_seconds():
        cache.set(key, total, _cache_seconds())
    return total, False


def _parse_after(raw: str | None) -> tuple[float, int] | None:
    if not raw:
        return None
    try:
        score, pk = raw.rsplit("_", 1)
        return float(score), int(pk)
    except ValueError:
        return None


def ranked_page(
    run: InferenceRun,
    category: Category,
    filters: Filters,
    *,
    page: int = 1,
    per_page: int = 24,
    after: str | None = None,
) -> GridPage:
    """One grid page of the category's ranked keyframes (see the module docstring)."""
    qs = ranked_queryset(
        run.pk, category.pk, filters, face_labels=category.kind == Category.Kind.PERSON
    )
    key = f"viva:retrieval:count:{run.pk}:{category.pk}:{_digest(filters)}"
    if filters.needs_metadata or filters.hide_labelled or filters.group_by_shot:
        total, approximate = _capped_count(qs, key)
    else:
        total, approximate = _counted(qs, key)  # an index range: exact and fast
    if total == 0 and not approximate:
        return GridPage([], 1, per_page, 0)
    descending = filters.descending
    ordered = qs.order_by(*(("-score", "id") if descending else ("score", "-id")))
    cursor = _parse_after(after)
    number = max(1, page)
    if cursor is not None:
        score, pk = cursor
        if descending:
            seek = ordered.filter(score__lte=score).exclude(score=score, id__lte=pk)
        else:
            seek = ordered.filter(score__gte=score).exclude(score=score, id__gte=pk)
        pks = list(seek.values_list("pk", flat=True)[: per_page + 1])
    else:
        pages = max(1, -(-total // per_page))
        number = min(number, pages)
        offset = (number - 1) * per_page
        pks = list(ordered.values_list("pk", flat=True)[offset : offset + per_page + 1])
    wanted = pks[:per_page]
    rows_qs = Prediction.objects.filter(pk__in=wanted).annotate(
        current=_label_subquery(category.pk, "image_id")
    )
    by_pk = {
        row["id"]: row
        for row in rows_qs.values("id", "score", "current", *(f"image__{f}" for f in _ROW_FIELDS))
    }
    rows = [by_pk[pk] for pk in wanted if pk in by_pk]
    links = _Links()
    items = [
        _item(row, "image__", row["current"], _score_text(row["score"]), links) for row in rows
    ]
    next_cursor = None
    if len(pks) > per_page and rows:
        next_cursor = f"{rows[-1]['score']!r}_{rows[-1]['id']}"
    return GridPage(items, number, per_page, total, approximate, next_cursor)


# --------------------------------------------------------------------------- combined


@dataclass
class CombinedSQL:
    """The combined query as SQL: ``select`` yields ``(image_id, score)`` rows, ordered."""

    select: str
    params: list[Any]
    count: str
    count_params: list[Any]


def _run_for(term, runs: dict[str, InferenceRun]) -> InferenceRun:
    run = runs.get(term.kind)
    if run is None:
        raise QueryError(f"No published {term.kind} model: run inference for {term.kind}s first.")
    return run


def combined_sql(
    query: Query,
    runs: dict[str, InferenceRun],
    *,
    label_category_id: int | None = None,
    with_metadata: bool = False,
    order: bool = True,
) -> CombinedSQL:
    """Build the SQL of a combined query (see the module docstring for the semantics).

    ``label_category_id`` is the category whose labels "hide labelled" looks at;
    ``with_metadata`` adds video id, shot id and time columns (for the export).
    """
    if not query.is_runnable:
        raise QueryError("Add at least one concept with AND or OR; NOT alone ranks nothing.")
    sqlite = connection.vendor == "sqlite"
    least, greatest = ("MIN", "MAX") if sqlite else ("LEAST", "GREATEST")
    pred = Prediction._meta.db_table
    img, vid, ann = Image._meta.db_table, Video._meta.db_table, Annotation._meta.db_table

    ands = [t for t in query.terms if t.op == "and"]
    ors = [t for t in query.terms if t.op == "or"]
    nots = [t for t in query.terms if t.op == "not"]
    params: list[Any] = []
    match: list[str] = []  # per positive term: its condition on p
    match_params: list[list[Any]] = []
    for term in ands + ors:
        run = _run_for(term, runs)
        match.append("(p.run_id = %s AND p.category_id = %s AND p.score >= %s)")
        match_params.append([run.pk, term.category_id, term.min_score])

    # Grouped per image: one score column per positive term.
    cols, col_params = [], []
    for i, (cond, cond_params) in enumerate(zip(match, match_params, strict=True)):
        cols.append(f"MAX(CASE WHEN {cond} THEN p.score END) AS s{i}")
        col_params += cond_params
    where = " OR ".join(match)
    where_params = [v for ps in match_params for v in ps]
    inner = (
        f"SELECT p.image_id AS image_id, {', '.join(cols)} FROM {pred} p "
        f"WHERE {where} GROUP BY p.image_id"
    )
    inner_params = col_params + where_params

    n_and = len(ands)
    and_cols = [f"g.s{i}" for i in range(n_and)]
    or_cols = [f"COALESCE(g.s{n_and + j}, -1.0)" for j in range(len(ors))]
    parts = list(and_cols)
    if or_cols:
        parts.append(or_cols[0] if len(or_cols) == 1 else f"{greatest}({', '.join(or_cols)})")
    score = parts[0] if len(parts) == 1 else f"{least}({', '.join(parts)})"

    conditions = [f"{c} IS NOT NULL" for c in and_cols]
    if or_cols:
        any_or = " OR ".join(f"g.s{n_and + j} IS NOT NULL" for j in range(len(ors)))
        conditions.append(f"({any_or})")
    cond_params: list[Any] = []
    for term in nots:
        run = _run_for(term, runs)
        conditions.append(
            f"NOT EXISTS (SELECT 1 FROM {pred} n WHERE n.image_id = g.image_id AND n.run_id = %s"
            " AND n.category_id = %s AND n.score >= %s)"
        )
        cond_params += [run.pk, term.category_id, term.min_score]
    filters = query.filters
    joins = ""
    if filters.needs_metadata or with_metadata:
        joins = f" JOIN {img} i ON i.id = g.image_id LEFT JOIN {vid} v ON v.id = i.video_id"
    if filters.collection_id:
        conditions.append("i.collection_id = %s")
        cond_params.append(filters.collection_id)
    if filters.title:
        escaped = (
            filters.title.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").upper()
        )
        conditions.append("UPPER(v.title) LIKE %s ESCAPE '\\'")
        cond_params.append(f"%{escaped}%")
    if filters.year_from is not None:
        conditions.append("v.year >= %s")
        cond_params.append(filters.year_from)
    if filters.year_to is not None:
        conditions.append("v.year <= %s")
        cond_params.append(filters.year_to)
    if filters.hide_labelled and label_category_id:
        conditions.append(
            f"NOT EXISTS (SELECT 1 FROM {ann} a WHERE a.image_id = g.image_id"
            " AND a.category_id = %s AND a.face_id IS NULL)"
        )
        cond_params.append(label_category_id)
    scored = f"SELECT g.image_id AS image_id, {score} AS score"
    if with_metadata:
        scored += ", i.video_id AS video_id, i.shot_id AS shot_id, i.time_ms AS time_ms"
    body = f" FROM ({inner}) g{joins} WHERE {' AND '.join(conditions)}"
    outer = f"SELECT * FROM ({scored}{body}) r"
    outer_params = inner_params + cond_params
    if filters.min_score is not None:
        outer += " WHERE r.score >= %s"
        outer_params = [*outer_params, filters.min_score]
    count = f"SELECT COUNT(*) FROM ({outer}) c"
    if order:
        direction = "DESC" if filters.descending else "ASC"
        outer += f" ORDER BY r.score {direction}, r.image_id ASC"
    params = list(outer_params)
    return CombinedSQL(outer, params, count, list(outer_params))


# A combined result list up to this size is read in one pass (its length is the count)
# and, when that was slow, cached for the next pages; larger ones are counted and paged
# with LIMIT/OFFSET.
MAX_LISTED = 100_000


def _combined_list(sql: CombinedSQL, key: str) -> tuple[list[tuple[int, float]] | None, int, bool]:
    """``(rows or None, total, approximate)``: the whole ordered list when it is small."""
    cached = cache.get(key)
    if cached is not None:
        rows, total = cached
        return rows, total, True
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(sql.select + " LIMIT %s", [*sql.params, MAX_LISTED + 1])
        rows = [(int(i), float(s)) for i, s in cursor.fetchall()]
        if len(rows) <= MAX_LISTED:
            total = len(rows)
        else:
            rows = None
            cursor.execute(sql.count, sql.count_params)
            total = cursor.fetchone()[0]
    if time.perf_counter() - started > _slow_seconds():
        cache.set(key, (rows, total), _cache_seconds())
    return rows, total, False


def combined_page(
    query: Query,
    runs: dict[str, InferenceRun],
    *,
    label_category_id: int | None = None,
    page: int = 1,
    per_page: int = 24,
) -> GridPage:
    """One grid page of a combined query: the ordered list (one pass, cached when slow;
    it gives the count), then the page's rows with labels — 2 queries (3 for huge lists)."""
    sql = combined_sql(query, runs, label_category_id=label_category_id)
    key = "viva:retrieval:combined:" + _digest(sql.select, sql.params)
    listed, total, approximate = _combined_list(sql, key)
    if total == 0:
        return GridPage([], 1, per_page, 0)
    pages = max(1, -(-total // per_page))
    number = min(max(1, page), pages)
    offset = (number - 1) * per_page
    if listed is not None:
        found = listed[offset : offset + per_page + 1]
    else:
        with connection.cursor() as cursor:
            cursor.execute(sql.select + " LIMIT %s OFFSET %s", [*sql.params, per_page + 1, offset])
            found = cursor.fetchall()
    scores = {image_id: score for image_id, score in found[:per_page]}
    rows_qs = Image.objects.filter(pk__in=list(scores))
    if label_category_id:
        rows_qs = rows_qs.annotate(current=_label_subquery(label_category_id, "pk"))
        columns = ("current", *_ROW_FIELDS)
    else:
        columns = _ROW_FIELDS
    by_pk = {row["id"]: row for row in rows_qs.values(*columns)}
    links = _Links()
    items = [
        _item(by_pk[pk], "", by_pk[pk].get("current"), _score_text(s), links)
        for pk, s in scores.items()
        if pk in by_pk
    ]
    # "next" by page number: a combined score is computed, so there is no index to seek on.
    next_cursor = "1" if len(found) > per_page else None
    return GridPage(items, number, per_page, total, approximate, next_cursor)


# --------------------------------------------------------------------------- hits (export)


@dataclass(frozen=True)
class Hit:
    image_id: int
    score: float
    video_id: int | None
    shot_id: int | None
    time_ms: int | None


def category_hits(
    run_id: int, category_id: int, threshold: float, filters: Filters | None = None
) -> Iterator[Hit]:
    """Every prediction of the category at or above ``threshold`` (streamed)."""
    qs = ranked_queryset(run_id, category_id, filters or Filters()).filter(score__gte=threshold)
    rows = qs.values_list(
        "image_id", "score", "image__video_id", "image__shot_id", "image__time_ms"
    ).order_by()
    for row in rows.iterator(chunk_size=5000):
        yield Hit(*row)


def combined_hits(query: Query, runs: dict[str, InferenceRun], threshold: float) -> Iterator[Hit]:
    """Every image of a combined query whose combined score is at or above ``threshold``."""
    query = query.with_filters(min_score=max(threshold, query.filters.min_score or 0.0))
    sql = combined_sql(query, runs, with_metadata=True, order=False)
    with connection.cursor() as cursor:
        cursor.execute(sql.select, sql.params)
        while rows := cursor.fetchmany(5000):
            for image_id, score, video_id, shot_id, time_ms in rows:
                yield Hit(image_id, score, video_id, shot_id, time_ms)
