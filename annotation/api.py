"""REST API of annotation (under /api/v1/): categories, images with their labels,
annotations and bulk labelling.

Roles (DESIGN.md section 8, enforced by :class:`viva.roles.HasRole`): researchers read;
annotators create and rename categories and save labels; deleting a category (with all
its labels, archived in the event log) needs a trainer. Every label goes through
:func:`annotation.labels.save_labels` with source "api", so the API obeys the same rules
as the grid.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from viva.media import media_url
from viva.models import Image
from viva.pagination import ApiPagination
from viva.roles import Role

from .labels import MAX_BATCH, LabelError, delete_category, parse_value, save_labels
from .models import Annotation, Category, Label, Source

MAX_ID = 2**63 - 1


def int_param(request, name: str, *, minimum: int | None = None) -> int | None:
    """An optional integer query parameter; a bad value is a 400 naming the parameter."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValidationError({name: ["A whole number is required."]}) from None
    if minimum is not None and value < minimum:
        raise ValidationError({name: [f"Must be at least {minimum}."]})
    if abs(value) > MAX_ID:
        raise ValidationError({name: ["The number is too large."]})
    return value


# --------------------------------------------------------------------------- categories


class CategorySerializer(serializers.ModelSerializer):
    class Meta:
        model = Category
        fields = ["id", "kind", "name", "description", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    def validate_name(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise serializers.ValidationError("The name must not be empty.")
        return value

    def validate(self, attrs):
        instance = self.instance
        if instance is not None and attrs.get("kind", instance.kind) != instance.kind:
            raise ValidationError({"kind": ["The kind of an existing category cannot change."]})
        name = attrs.get("name", instance.name if instance else "")
        kind = attrs.get("kind", instance.kind if instance else Category.Kind.CONCEPT)
        if Category.clash(kind, name, exclude_pk=instance.pk if instance else None):
            raise ValidationError({"name": [f"A {kind} named “{name}” already exists."]})
        return attrs


@extend_schema(
    parameters=[
        OpenApiParameter("kind", str, enum=[k for k, _ in Category.Kind.choices]),
        OpenApiParameter("name", str, description="Part of the name (case-insensitive)."),
    ]
)
class CategoryViewSet(viewsets.ModelViewSet):
    """Concepts and persons. Deleting one archives its labels in the event log first."""

    min_role = Role.RESEARCHER
    roles_by_method = {
        "POST": Role.ANNOTATOR,
        "PUT": Role.ANNOTATOR,
        "PATCH": Role.ANNOTATOR,
        "DELETE": Role.TRAINER,
    }
    serializer_class = CategorySerializer
    pagination_class = ApiPagination

    def get_queryset(self):
        qs = Category.objects.all()
        params = self.request.query_params
        kind = params.get("kind")
        if kind:
            if kind not in Category.Kind.values:
                raise ValidationError({"kind": [f"One of {', '.join(Category.Kind.values)}."]})
            qs = qs.filter(kind=kind)
        if params.get("name"):
            if "\x00" in params["name"]:
                raise ValidationError({"name": ["Null characters are not allowed."]})
            qs = qs.filter(name__icontains=params["name"][:200])
        return qs

    def perform_create(self, serializer):
        serializer.save(created_by=self.request.user)

    def perform_destroy(self, instance):
        delete_category(instance, user=self.request.user)


# --------------------------------------------------------------------------- images


class ImageLabelSerializer(serializers.Serializer):
    category = serializers.IntegerField(source="category_id")
    category_name = serializers.CharField(source="category.name")
    value = serializers.ChoiceField(choices=Label.choices)
    source = serializers.CharField()
    updated_at = serializers.DateTimeField()


class ImageSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Image
        fields = [
            "id",
            "collection",
            "video",
            "shot",
            "frame",
            "time_ms",
            "width",
            "height",
            "original_name",
            "url",
            "thumbnail_url",
            "created_at",
        ]

    @extend_schema_field(OpenApiTypes.STR)
    def get_url(self, image: Image) -> str:
        return media_url(image.file)

    @extend_schema_field(OpenApiTypes.STR)
    def get_thumbnail_url(self, image: Image) -> str:
        return media_url(image.thumbnail or image.file)


class ImageDetailSerializer(ImageSerializer):
    labels = serializers.SerializerMethodField()

    class Meta(ImageSerializer.Meta):
        fields = [*ImageSerializer.Meta.fields, "labels"]

    @extend_schema_field(ImageLabelSerializer(many=True))
    def get_labels(self, image: Image) -> list[dict]:
        rows = (
            Annotation.objects.filter(image=image, face__isnull=True)
            .select_related("category")
            .order_by("category_id")
        )
        return ImageLabelSerializer(rows, many=True).data


@extend_schema(
    parameters=[
        OpenApiParameter("collection", int, description="Only images of this collection."),
        OpenApiParameter("video", int, description="Only keyframes of this video."),
    ]
)
class ImageViewSet(viewsets.ReadOnlyModelViewSet):
    """Images and keyframes; the detail includes the image's current labels."""

    min_role = Role.RESEARCHER
    pagination_class = ApiPagination

    def get_queryset(self):
        qs = Image.objects.order_by("id")
        collection = int_param(self.request, "collection")
        video = int_param(self.request, "video")
        if collection is not None:
            qs = qs.filter(collection_id=collection)
        if video is not None:
            qs = qs.filter(video_id=video)
        return qs

    def get_serializer_class(self):
        return ImageDetailSerializer if self.action == "retrieve" else ImageSerializer


# --------------------------------------------------------------------------- annotations


class AnnotationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Annotation
        fields = ["id", "image", "face", "category", "value", "source", "user", "updated_at"]


@extend_schema_field(
    {
        "oneOf": [
            {"type": "integer", "enum": [1, -1, 0]},
            {"type": "string", "enum": ["positive", "negative", "neutral", "none"]},
        ],
        "nullable": True,
    }
)
class LabelValueField(serializers.Field):
    """1 / -1 / 0 or "positive" / "negative" / "neutral"; ``null`` removes the label."""

    default_error_messages = {
        "invalid": "{message} Use 1, -1, 0, positive, negative, neutral or null."
    }

    def __init__(self, **kwargs):
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def validate_empty_values(self, data):
        if data is None:
            return True, None
        return super().validate_empty_values(data)

    def to_internal_value(self, data):
        if not isinstance(data, str | int) or isinstance(data, bool):
            self.fail("invalid", message=f"Unknown label {data!r}.")
        try:
            return parse_value(data)
        except LabelError as exc:
            self.fail("invalid", message=str(exc))

    def to_representation(self, value):
        return value


class LabelItemSerializer(serializers.Serializer):
    image = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    value = LabelValueField()


class BulkLabelsSerializer(serializers.Serializer):
    category = serializers.PrimaryKeyRelatedField(queryset=Category.objects.all())
    labels = serializers.ListField(
        child=LabelItemSerializer(), allow_empty=False, max_length=MAX_BATCH
    )


class RejectedLabelSerializer(serializers.Serializer):
    image = serializers.IntegerField()
    error = serializers.CharField()


class BulkResultSerializer(serializers.Serializer):
    saved = serializers.IntegerField()
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    removed = serializers.IntegerField()
    unchanged = serializers.IntegerField()
    rejected = RejectedLabelSerializer(many=True)


@extend_schema(
    parameters=[
        OpenApiParameter("category", int),
        OpenApiParameter("value", int, enum=[1, -1, 0]),
        OpenApiParameter("image", int),
        OpenApiParameter("source", str, enum=Source.values),
    ]
)
class AnnotationViewSet(viewsets.ReadOnlyModelViewSet):
    """Current labels; ``bulk`` saves up to ``MAX_BATCH`` labels of one category."""

    min_role = Role.RESEARCHER
    roles_by_method = {"POST": Role.ANNOTATOR}
    serializer_class = AnnotationSerializer
    pagination_class = ApiPagination

    def get_queryset(self):
        qs = Annotation.objects.order_by("id")
        for name, field in (("category", "category_id"), ("image", "image_id")):
            value = int_param(self.request, name)
            if value is not None:
                qs = qs.filter(**{field: value})
        value = int_param(self.request, "value")
        if value is not None:
            if value not in Label.values:
                raise ValidationError({"value": ["One of 1, -1, 0."]})
            qs = qs.filter(value=value)
        source = self.request.query_params.get("source")
        if source:
            if source not in Source.values:
                raise ValidationError({"source": [f"One of {', '.join(Source.values)}."]})
            qs = qs.filter(source=source)
        return qs

    @extend_schema(
        request=BulkLabelsSerializer,
        responses={200: BulkResultSerializer},
        description=(
            "Save labels of one category: ``{category, labels: [{image, value}]}``; "
            "``value`` null removes a label. Unknown images are reported in ``rejected``; "
            f"at most {MAX_BATCH} labels per request."
        ),
    )
    @action(detail=False, methods=["post"], pagination_class=None)
    def bulk(self, request, format=None):
        payload = BulkLabelsSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        changes = [(item["image"], item["value"]) for item in data["labels"]]
        try:
            result = save_labels(data["category"], changes, user=request.user, source=Source.API)
        except LabelError as exc:
            return Response({"detail": str(exc)}, status=400)
        return Response(result.as_dict())
