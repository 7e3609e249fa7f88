"""REST API of training and inference (under /api/v1/): start a training run, start an
inference run, classify an uploaded image with the active concept model.

Roles (DESIGN.md section 8): starting training or inference needs a trainer, as on the
pages; classifying an image is reading (researcher). The starts call the same services
as the pages (:func:`training.services.start_training`,
:func:`retrieval.inference.start_inference`): a refusal is a 400 ``{"detail": message}``
and creates no job.

Torch is imported only inside :func:`classify_image` (the web process imports this
module through the URLconf; ``tests/test_training_imports.py``). The network of the
active version is loaded once per process and kept (:class:`_ModelCache`), keyed by the
version's id and weights path, and reloaded when another version becomes active.
"""

from __future__ import annotations

import io
import threading

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.models import Category
from annotation.safe_fetch import FetchError, verify_image
from retrieval.inference import InferenceRefused, start_inference
from viva.api import DetailSerializer, JobSerializer
from viva.roles import Role

from .errors import TrainingRefused
from .models import ModelVersion
from .registry import active_version
from .services import start_training

CLASSIFY_MAX_BYTES = 20 * 2**20
CLASSIFY_MAX_PIXELS = 50_000_000


def _scalar_options(data, *, allowed: type | tuple[type, ...]) -> dict:
    """The request body as a flat dict of options (JSON object or form fields)."""
    if hasattr(data, "dict"):  # QueryDict from a form post: one value per key
        data = data.dict()
    if not isinstance(data, dict):
        raise ValidationError({"non_field_errors": ["Expected a JSON object of options."]})
    bad = [k for k, v in data.items() if v is not None and not isinstance(v, allowed)]
    if bad:
        raise ValidationError({k: ["Expected a single value."] for k in bad})
    return data


# --------------------------------------------------------------------------- training


class TrainingStartView(APIView):
    """Start a concept training run (options as on the training page)."""

    min_role = Role.TRAINER

    @extend_schema(
        request={"application/json": OpenApiTypes.OBJECT},
        responses={201: JobSerializer, 400: DetailSerializer},
        examples=[
            OpenApiExample(
                "Tiny run on the CPU",
                value={
                    "network": "tiny-cnn",
                    "init": "random",
                    "device": "cpu",
                    "epochs_phase1": 2,
                },
                request_only=True,
            )
        ],
        description="Options of ``training.config.TrainConfig`` (network, device, epochs_phase1, "
        "…). A refusal (too few labels, device busy or missing, bad option) is a 400 "
        '``{"detail": message}`` and starts nothing.',
    )
    def post(self, request, format=None):
        options = _scalar_options(request.data, allowed=(str, int, float, bool))
        try:
            job = start_training(request.user, options)
        except TrainingRefused as exc:
            return Response({"detail": str(exc)}, status=400)
        except (TypeError, ValueError, OverflowError) as exc:
            return Response({"detail": f"Bad training options: {exc}"}, status=400)
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)


# --------------------------------------------------------------------------- inference


class InferenceStartSerializer(serializers.Serializer):
    device = serializers.CharField(required=False, max_length=50, default="auto")
    collection_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, max_length=10_000
    )
    batch_size = serializers.IntegerField(required=False, min_value=1, max_value=1024)
    chunk_size = serializers.IntegerField(required=False, min_value=1, max_value=1_000_000)
    workers = serializers.IntegerField(required=False, min_value=0, max_value=64)


class InferenceStartView(APIView):
    """Start inference of the active concept model over the keyframes."""

    min_role = Role.TRAINER

    @extend_schema(
        request=InferenceStartSerializer,
        responses={201: JobSerializer, 400: DetailSerializer},
        description="Scores every keyframe of the chosen collections (default: all). "
        "A refusal (no active model, nothing to score, a class map that no longer matches "
        'the categories, device busy or missing) is a 400 ``{"detail": message}``.',
    )
    def post(self, request, format=None):
        payload = InferenceStartSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            job = start_inference(request.user, dict(payload.validated_data))
        except InferenceRefused as exc:
            return Response({"detail": str(exc)}, status=400)
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)


# --------------------------------------------------------------------------- classify


class _ModelCache:
    """The active version's network, loaded once per process (per version)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.key: tuple | None = None
        self.loaded = None  # (model, preprocessing)
        self.loads = 0  # for tests: how often a network was read from disk

    def get(self, version: ModelVersion):
        key = (version.pk, version.weights_path)
        with self.lock:
            if self.key != key:
                from .scoring import load_network

                self.loaded = None
                self.key = None
                self.loaded = load_network(version, "cpu")
                self.key = key
                self.loads += 1
            return self.loaded

    def clear(self) -> None:
        with self.lock:
            self.key, self.loaded = None, None


MODEL_CACHE = _ModelCache()


class NoActiveModel(Exception):
    """No active concept model (or its files are unreadable); the message is for the user."""


NO_MODEL = "There is no active concept model; train one (or activate a version) first."


def classify_image(content: bytes, version: ModelVersion | None = None) -> list[dict]:
    """Concept scores of one (verified) image from ``version`` (default: the active
    concept version), best first. Raises :class:`NoActiveModel` without a usable model
    and ``OSError`` when the image cannot be decoded."""
    import torch

    from .preprocessing import to_uint8_tensor

    if version is None:
        version = active_version(ModelVersion.Kind.CONCEPT)
    if version is None:
        raise NoActiveModel(NO_MODEL)
    try:
        model, pre = MODEL_CACHE.get(version)
    except OSError as exc:
        raise NoActiveModel(
            f"The files of the active model {version} cannot be read ({exc}); activate "
            "another version or train a new one."
        ) from exc
    with pre.open(io.BytesIO(content)) as img:
        tensor = to_uint8_tensor(pre.resize_image(img)).unsqueeze(0)
    with torch.inference_mode():
        probs = torch.sigmoid(model(tensor).float())[0].tolist()
    classes = sorted(version.class_map, key=lambda c: int(c["index"]))
    names = dict(
        Category.objects.filter(pk__in=[int(c["id"]) for c in classes]).values_list("pk", "name")
    )
    scores = [
        {"category_id": int(c["id"]), "name": names[int(c["id"])], "score": float(p)}
        for c, p in zip(classes, probs, strict=True)
        if int(c["id"]) in names  # categories deleted since training are left out
    ]
    scores.sort(key=lambda s: (-s["score"], s["category_id"]))
    return scores


class ClassifySerializer(serializers.Serializer):
    image = serializers.FileField(help_text="JPEG, PNG, … at most 20 MB and 50 megapixels.")

    def validate_image(self, upload):
        limit = getattr(settings, "VIVA_CLASSIFY_MAX_BYTES", CLASSIFY_MAX_BYTES)
        if upload.size > limit:
            raise serializers.ValidationError(
                f"The file is too large ({upload.size:,} bytes; at most {limit:,})."
            )
        content = upload.read()
        try:
            verify_image(content, max_pixels=CLASSIFY_MAX_PIXELS)
        except FetchError as exc:
            raise serializers.ValidationError(str(exc)) from None
        return content


class ConceptScoreSerializer(serializers.Serializer):
    category_id = serializers.IntegerField()
    name = serializers.CharField()
    score = serializers.FloatField()


class ClassifyResultSerializer(serializers.Serializer):
    model_version = serializers.IntegerField()
    scores = ConceptScoreSerializer(many=True)


class ClassifyView(APIView):
    """Concept scores of an uploaded image from the active concept model."""

    min_role = Role.RESEARCHER
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        request={"multipart/form-data": ClassifySerializer},
        responses={
            200: ClassifyResultSerializer,
            400: OpenApiResponse(description="Not an image, too large, or no file."),
            409: OpenApiResponse(DetailSerializer, description="No active concept model."),
        },
    )
    def post(self, request, format=None):
        payload = ClassifySerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        version = active_version(ModelVersion.Kind.CONCEPT)
        try:
            if version is None:
                raise NoActiveModel(NO_MODEL)
            scores = classify_image(payload.validated_data["image"], version)
        except NoActiveModel as exc:
            return Response({"detail": str(exc)}, status=409)
        except OSError as exc:  # decoding failed after verification (truncated data)
            raise ValidationError({"image": [f"The image could not be decoded ({exc})."]}) from exc
        return Response({"model_version": version.version, "scores": scores})
