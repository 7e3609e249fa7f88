"""REST API of retrieval (under /api/v1/): ranked results of one category, combined
queries, and starting a segment export.

Roles (DESIGN.md section 8): researchers search, browse and export, as on the pages.
The parameters are those of the pages' URLs (:mod:`retrieval.query`) — a search URL of
the UI works here with the same query string — plus ``limit`` (at most
:data:`MAX_LIMIT`) and ``offset``. Unlike the pages, bad parameter values are a 400 with
a message per parameter instead of being ignored.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.db import connection
from django.http import QueryDict
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.grid import _counted, _label_subquery
from annotation.models import Category
from viva.api import DetailSerializer, JobSerializer
from viva.jobs import start_job
from viva.media import media_url
from viva.models import Image
from viva.pagination import ApiPagination
from viva.roles import Role

from .export import default_threshold
from .query import parse_filters, parse_query
from .ranking import (
    QueryError,
    _capped_count,
    _combined_list,
    _digest,
    combined_sql,
    published_run,
    published_runs,
    ranked_queryset,
)

MAX_LIMIT = ApiPagination.max_limit
MAX_OFFSET = 1_000_000
METADATA_PARAMS = ("collection", "title", "year_from", "year_to")

_IMAGE_FIELDS = (
    "id",
    "collection_id",
    "video_id",
    "video__title",
    "video__year",
    "time_ms",
    "shot_id",
    "shot__start_ms",
    "shot__end_ms",
    "file",
    "thumbnail",
)


# --------------------------------------------------------------------------- parameters


class PageParams(serializers.Serializer):
    limit = serializers.IntegerField(min_value=1, max_value=MAX_LIMIT, default=100)
    offset = serializers.IntegerField(min_value=0, max_value=MAX_OFFSET, default=0)


class FilterParams(PageParams):
    """The metadata filters of :func:`retrieval.query.parse_filters`, validated."""

    min_score = serializers.FloatField(
        min_value=0,
        max_value=100,
        required=False,
        help_text="0–1 (values above 1 are percent, as on the pages).",
    )
    hide_labelled = serializers.BooleanField(required=False, default=False)
    collection = serializers.IntegerField(min_value=1, required=False)
    title = serializers.CharField(max_length=200, required=False, allow_blank=True)
    year_from = serializers.IntegerField(min_value=1800, max_value=2200, required=False)
    year_to = serializers.IntegerField(min_value=1800, max_value=2200, required=False)
    order = serializers.ChoiceField(["asc", "desc"], required=False, default="desc")


class RankedParams(FilterParams):
    category = serializers.PrimaryKeyRelatedField(queryset=Category.objects.all())
    group = serializers.ChoiceField(
        ["shot"], required=False, help_text="``shot``: the best keyframe of each shot only."
    )


def _validated(serializer_class, request) -> dict:
    params = serializer_class(data=request.query_params)
    params.is_valid(raise_exception=True)
    return params.validated_data


# --------------------------------------------------------------------------- results


class HitVideoSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    title = serializers.CharField()
    year = serializers.IntegerField(allow_null=True)


class HitShotSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    start_ms = serializers.IntegerField()
    end_ms = serializers.IntegerField()


class HitSerializer(serializers.Serializer):
    image = serializers.IntegerField()
    score = serializers.FloatField()
    label = serializers.IntegerField(
        allow_null=True, required=False, help_text="Current label for the category, if any."
    )
    collection = serializers.IntegerField()
    video = HitVideoSerializer(allow_null=True)
    time_ms = serializers.IntegerField(allow_null=True)
    shot = HitShotSerializer(allow_null=True)
    url = serializers.CharField()
    thumbnail_url = serializers.CharField()


class HitPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    approximate = serializers.BooleanField(
        help_text="True when ``count`` is a capped or cached estimate."
    )
    model_version = serializers.IntegerField()
    results = HitSerializer(many=True)


def _hit(row: dict, score: float, prefix: str = "", **extra) -> dict:
    video_id = row[prefix + "video_id"]
    shot_id = row[prefix + "shot_id"]
    file = row[prefix + "file"]
    return {
        "image": row[prefix + "id"],
        "score": score,
        **extra,
        "collection": row[prefix + "collection_id"],
        "video": {
            "id": video_id,
            "title": row[prefix + "video__title"],
            "year": row[prefix + "video__year"],
        }
        if video_id
        else None,
        "time_ms": row[prefix + "time_ms"],
        "shot": {
            "id": shot_id,
            "start_ms": row[prefix + "shot__start_ms"],
            "end_ms": row[prefix + "shot__end_ms"],
        }
        if shot_id
        else None,
        "url": media_url(file),
        "thumbnail_url": media_url(row[prefix + "thumbnail"] or file),
    }


def _filters(params: dict):
    """The page's :class:`Filters` from validated params (the query string's spelling)."""
    given = QueryDict(mutable=True)
    for key in ("min_score", "collection", "title", "year_from", "year_to", "order", "group"):
        if params.get(key) not in (None, ""):
            given[key] = str(params[key])
    if params.get("hide_labelled"):
        given["hide_labelled"] = "1"
    return parse_filters(given)


class RetrievalView(APIView):
    """Keyframes ranked by their score for one category (the published inference run)."""

    min_role = Role.RESEARCHER

    @extend_schema(
        parameters=[RankedParams],
        responses={
            200: HitPageSerializer,
            400: OpenApiResponse(description="Bad parameters (a message per parameter)."),
            409: OpenApiResponse(DetailSerializer, description="No published inference run."),
        },
    )
    def get(self, request, format=None):
        params = _validated(RankedParams, request)
        category: Category = params["category"]
        run = published_run(category.kind)
        if run is None:
            return Response(
                {"detail": f"No published {category.kind} model: run inference first."},
                status=409,
            )
        filters = _filters(params)
        qs = ranked_queryset(run.pk, category.pk, filters)
        key = f"viva:api:retrieval:count:{run.pk}:{category.pk}:{_digest(filters)}"
        if filters.needs_metadata or filters.hide_labelled or filters.group_by_shot:
            total, approximate = _capped_count(qs, key)
        else:
            total, approximate = _counted(qs, key)
        order = ("-score", "id") if filters.descending else ("score", "-id")
        limit, offset = params["limit"], params["offset"]
        rows = (
            qs.order_by(*order)
            .annotate(current=_label_subquery(category.pk, "image_id"))
            .values("score", "current", *(f"image__{f}" for f in _IMAGE_FIELDS))[
                offset : offset + limit
            ]
        )
        results = [_hit(r, r["score"], "image__", label=r["current"]) for r in rows]
        return Response(
            {
                "count": total,
                "approximate": approximate,
                "model_version": run.model_version.version,
                "results": results,
            }
        )


TERMS_HELP = (
    "Terms ``kind:category:operator:min score``, e.g. ``concept:12:and:0.5``; operators "
    "and / or / not; repeat the parameter for several terms (as in the search page's URL)."
)


class SearchParams(FilterParams):
    t = serializers.ListField(child=serializers.CharField(max_length=100), help_text=TERMS_HELP)


class SearchPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    approximate = serializers.BooleanField()
    query = serializers.CharField(help_text="The normalised query string (shareable).")
    results = HitSerializer(many=True)


class SearchView(APIView):
    """Concepts (and persons) combined with AND / OR / NOT plus metadata filters."""

    min_role = Role.RESEARCHER

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "t",
                OpenApiTypes.STR,
                many=True,
                required=True,
                description=TERMS_HELP,
            ),
            FilterParams,
        ],
        responses={
            200: SearchPageSerializer,
            400: OpenApiResponse(description="Bad parameters or an unrunnable query."),
            409: OpenApiResponse(DetailSerializer, description="No published inference run."),
        },
    )
    def get(self, request, format=None):
        data = {k: v for k, v in request.query_params.items() if k != "t"}
        data["t"] = request.query_params.getlist("t")
        checked = SearchParams(data=data)
        checked.is_valid(raise_exception=True)
        params = checked.validated_data
        query = parse_query(request.query_params)
        if query.errors:
            raise ValidationError({"t": list(query.errors)})
        kinds = dict(
            Category.objects.filter(pk__in=[t.category_id for t in query.terms]).values_list(
                "pk", "kind"
            )
        )
        missing = sorted({t.category_id for t in query.terms} - set(kinds))
        if missing:
            raise ValidationError(
                {"t": [f"Unknown categories: {', '.join(str(m) for m in missing)}."]}
            )
        query = query.with_kinds(kinds)
        if not query.is_runnable:
            raise ValidationError(
                {"t": ["Add at least one term with AND or OR; NOT alone ranks nothing."]}
            )
        try:
            sql = combined_sql(query, published_runs())
        except QueryError as exc:
            return Response({"detail": str(exc)}, status=409)
        key = "viva:retrieval:combined:" + _digest(sql.select, sql.params)
        listed, total, approximate = _combined_list(sql, key)
        limit, offset = params["limit"], params["offset"]
        if listed is not None:
            found = listed[offset : offset + limit]
        else:
            with connection.cursor() as cursor:
                cursor.execute(sql.select + " LIMIT %s OFFSET %s", [*sql.params, limit, offset])
                found = cursor.fetchall()
        by_pk = {
            row["id"]: row
            for row in Image.objects.filter(pk__in=[i for i, _ in found]).values(*_IMAGE_FIELDS)
        }
        results = [_hit(by_pk[i], float(s)) for i, s in found if i in by_pk]
        return Response(
            {
                "count": total,
                "approximate": approximate,
                "query": query.urlencode(),
                "results": results,
            }
        )


# --------------------------------------------------------------------------- export


class ExportStartSerializer(serializers.Serializer):
    category = serializers.PrimaryKeyRelatedField(
        queryset=Category.objects.all(), required=False, allow_null=True
    )
    query = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=2000,
        help_text="A combined query as in the search URL, e.g. ``t=concept:12:and:0.5``.",
    )
    threshold = serializers.FloatField(
        min_value=0,
        max_value=1,
        required=False,
        help_text="Minimum score (default: 0.7 for concepts, 0.8 for persons).",
    )
    merge_shots = serializers.BooleanField(required=False, default=True)
    collection = serializers.IntegerField(min_value=1, required=False)
    title = serializers.CharField(max_length=200, required=False, allow_blank=True)
    year_from = serializers.IntegerField(min_value=1800, max_value=2200, required=False)
    year_to = serializers.IntegerField(min_value=1800, max_value=2200, required=False)

    def validate(self, attrs):
        category, query_text = attrs.get("category"), attrs.get("query") or ""
        if bool(category) == bool(query_text):
            raise ValidationError(
                {"non_field_errors": ["Give either a category or a query (not both)."]}
            )
        if query_text:
            query = parse_query(QueryDict(query_text))
            if query.errors:
                raise ValidationError({"query": list(query.errors)})
            known = set(
                Category.objects.filter(pk__in=[t.category_id for t in query.terms]).values_list(
                    "pk", flat=True
                )
            )
            missing = sorted({t.category_id for t in query.terms} - known)
            if missing:
                raise ValidationError(
                    {"query": [f"Unknown categories: {', '.join(str(m) for m in missing)}."]}
                )
            if not query.is_runnable:
                raise ValidationError({"query": ["The query needs at least one AND or OR term."]})
            attrs["parsed_query"] = query
        return attrs


class ExportStartView(APIView):
    """Start a segment export (CSV + JSON in a zip) of a category or a combined query."""

    min_role = Role.RESEARCHER

    @extend_schema(
        request=ExportStartSerializer,
        responses={201: JobSerializer, 400: OpenApiResponse(description="Bad parameters.")},
        description="The job's result names the zip; download it from "
        "``/retrieve/export/<job id>/download/`` when the job has succeeded.",
    )
    def post(self, request, format=None):
        payload = ExportStartSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        params: dict = {"merge_shots": data["merge_shots"]}
        if data.get("category"):
            category = data["category"]
            params["category_id"] = category.pk
            meta = {k: data[k] for k in METADATA_PARAMS if data.get(k) not in (None, "")}
            if meta:
                params["filters"] = urlencode(meta)
            title = f"Export of “{category.name}”"
            kind = category.kind
        else:
            params["query"] = data["parsed_query"].urlencode()
            title = "Export of a combined query"
            kind = "concept"
        threshold = data.get("threshold")
        params["threshold"] = default_threshold(kind) if threshold is None else threshold
        job = start_job("export_segments", params, user=request.user, title=title)
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)
