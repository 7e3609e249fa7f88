"""``POST /api/v1/similar/``: query by example through the API (issue 6), researchers.

The query is one of: image files (``image``, repeatable), image URLs (``url``, repeatable;
fetched with the same safe-fetch rules as the pages), archive image ids (``image_id``,
repeatable) or the positives of a concept (``category``). ``k`` (1–1000, default 100) and
``scope`` (``keyframes``, the default, or ``all``). Answers: 200 with the results nearest
first; 400 for bad input (a message per file / URL); 409 while no index exists; 503 when
the index backend is down (the rest of the API keeps working).
"""

from __future__ import annotations

from django.utils.datastructures import MultiValueDict
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import similarity
from annotation.models import Category
from annotation.views.query import MAX_POSITIVES, ImageInputForm, positive_image_ids
from viva.api import DetailSerializer
from viva.media import media_url
from viva.models import Image
from viva.roles import Role

from . import service


class SimilarParams(serializers.Serializer):
    image_id = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, max_length=MAX_POSITIVES
    )
    category = serializers.IntegerField(min_value=1, required=False)
    k = serializers.IntegerField(min_value=1, max_value=similarity.MAX_K, default=100)
    scope = serializers.ChoiceField(choices=["keyframes", "all"], default="keyframes")


class SimilarResultSerializer(serializers.Serializer):
    image = serializers.IntegerField()
    distance = serializers.FloatField()
    thumbnail = serializers.CharField()
    video = serializers.IntegerField(allow_null=True)
    video_title = serializers.CharField(allow_blank=True)
    time_ms = serializers.IntegerField(allow_null=True)


class SimilarResponseSerializer(serializers.Serializer):
    results = SimilarResultSerializer(many=True)
    index = serializers.DictField()


class SimilarView(APIView):
    min_role = Role.RESEARCHER
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    @extend_schema(
        request=None,
        responses={
            200: SimilarResponseSerializer,
            400: OpenApiResponse(description="Bad or unreadable query images."),
            409: OpenApiResponse(DetailSerializer, description="The index is not built yet."),
            503: OpenApiResponse(DetailSerializer, description="The index backend is down."),
        },
    )
    def post(self, request, format=None):
        data = request.data
        getlist = data.getlist if hasattr(data, "getlist") else lambda key: _as_list(data.get(key))
        ids = getlist("image_id")
        checked = SimilarParams(
            data={
                **({"image_id": ids} if ids else {}),
                **{key: data[key] for key in ("category", "k", "scope") if data.get(key)},
            }
        )
        checked.is_valid(raise_exception=True)
        params = checked.validated_data
        query = self._query(request, params, getlist)
        try:
            results = service.search(
                query, params["k"], keyframes_only=params["scope"] == "keyframes"
            )
        except service.IndexUnavailable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        except similarity.IndexNotBuilt as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        except similarity.SimilarityError as exc:
            raise ValidationError({"query": [str(exc)]}) from exc
        return Response({"results": _rows(results), "index": _index_info()})

    def _query(self, request, params, getlist) -> list:
        if params.get("image_id"):
            found = set(
                Image.objects.filter(pk__in=params["image_id"]).values_list("pk", flat=True)
            )
            missing = [i for i in params["image_id"] if i not in found]
            if missing:
                raise ValidationError({"image_id": [f"Unknown images: {missing}."]})
            return list(params["image_id"])
        if params.get("category"):
            category = Category.objects.filter(pk=params["category"]).first()
            if category is None:
                raise ValidationError({"category": ["Unknown category."]})
            ids = positive_image_ids(category)
            if not ids:
                raise ValidationError({"category": [f"“{category.name}” has no positive images."]})
            return ids
        form = ImageInputForm(
            {"urls": "\n".join(str(u) for u in getlist("url"))},
            MultiValueDict({"files": request.FILES.getlist("image")}),
        )
        if not form.is_valid():
            raise ValidationError(form.errors)
        if not form.has_input():
            raise ValidationError(
                {"query": ["Send image files (image), URLs (url), image_id or category."]}
            )
        images, problems = form.load_images()
        if problems:
            raise ValidationError({"query": problems})
        # The files themselves: decoded exactly as the archive was when indexed.
        return [i.content for i in images]


def _as_list(value) -> list:
    """A JSON body's value as a list: a single value (``"url": "https://…"``) is one item,
    never split into its characters."""
    if value is None or value == "" or value == []:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _rows(results: list[tuple[int, float]]) -> list[dict]:
    rows = Image.objects.filter(pk__in=[i for i, _ in results]).values(
        "pk", "file", "thumbnail", "video_id", "video__title", "time_ms"
    )
    by_id = {r["pk"]: r for r in rows}
    return [
        {
            "image": i,
            "distance": d,
            "thumbnail": media_url(by_id[i]["thumbnail"] or by_id[i]["file"]),
            "video": by_id[i]["video_id"],
            "video_title": by_id[i]["video__title"] or "",
            "time_ms": by_id[i]["time_ms"],
        }
        for i, d in results
        if i in by_id
    ]


def _index_info() -> dict:
    current = service.status()
    return {
        "model_version": current.version.version if current.version else None,
        "backend": current.backend,
        "indexed": current.n_codes,
        "images": current.n_images,
    }
