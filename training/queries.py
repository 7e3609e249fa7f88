"""Small read-only queries the training pages need beside the backend's services.

Kept apart from :mod:`training.services` and :mod:`training.registry` (which do the work)
so the pages can ask cheap questions without building a label matrix: the train page is
opened often and must stay cheap in an archive with millions of labels. Torch-free at
import time, like everything the pages import (see :mod:`training.constants`).
"""

from __future__ import annotations

from django.db.models import Count

from annotation.models import Annotation, Category
from viva.models import Job

from .errors import TrainingError
from .models import ModelVersion
from .network_specs import NETWORKS, get_spec
from .services import JOB_KIND
from .weights import WeightsUnavailable, resolve_weights
from .weights import download_allowed as _download_allowed


def eligible_concept_count(threshold: int) -> tuple[int, int]:
    """``(concepts with ≥ threshold positive image labels, all concepts)`` in two
    grouped queries (the same rule as :func:`training.dataset.eligible_concepts`)."""
    total = Category.objects.filter(kind=Category.Kind.CONCEPT).count()
    eligible = (
        Annotation.objects.filter(face__isnull=True, category__kind=Category.Kind.CONCEPT, value=1)
        .values("category")
        .annotate(n=Count("pk"))
        .filter(n__gte=max(1, int(threshold)))
        .count()
    )
    return eligible, total


def training_jobs(limit: int = 10):
    """The newest concept training runs (any status), newest first."""
    return Job.objects.filter(kind=JOB_KIND).select_related("created_by")[:limit]


def current_run(job_id: int | None = None) -> Job | None:
    """The run the train page shows: the one asked for, else the oldest *active* run
    (what the user is most likely waiting for), else the newest finished one."""
    runs = Job.objects.filter(kind=JOB_KIND).select_related("created_by")
    if job_id is not None:
        return runs.filter(pk=job_id).first()
    active = runs.filter(status__in=Job.ACTIVE).order_by("created_at").first()
    return active or runs.first()


def version_of_job(job: Job | None) -> ModelVersion | None:
    """The model version a finished run registered, if any."""
    if job is None:
        return None
    return ModelVersion.objects.filter(job_id=job.pk).first()


def get_version(number: int, kind: str = ModelVersion.Kind.CONCEPT) -> ModelVersion | None:
    return ModelVersion.objects.filter(kind=kind, version=number).first()


def weights_status(network: str) -> dict:
    """Where a run of ``network`` with ImageNet initialisation would get its weights,
    *without* downloading anything: ``{"network", "pretrained", "available", "text"}``.

    Shown in the advanced fold so a non-expert learns before pressing "Start" that an
    offline machine needs the weights file (DESIGN.md 6). Refusing such a start is
    :func:`training.services.check_start_weights` (same look-up)."""
    spec = get_spec(network)
    if spec.pretrained is None:
        return {
            "network": network,
            "pretrained": False,
            "available": False,
            "text": "trains from random initialisation only",
        }
    try:
        resolved = resolve_weights(network, "pretrained", allow_download=False)
    except WeightsUnavailable:
        if download_allowed():
            return {
                "network": network,
                "pretrained": True,
                "available": False,
                "text": "ImageNet weights not on this machine; the run will try to download them",
            }
        return {
            "network": network,
            "pretrained": True,
            "available": False,
            "text": "ImageNet weights not on this machine and downloading is "
            "switched off: put the file into VIVA_WEIGHTS_DIR or choose "
            "random initialisation",
        }
    except TrainingError as exc:  # an unreadable folder etc.: show, do not crash
        return {"network": network, "pretrained": True, "available": False, "text": str(exc)}
    return {
        "network": network,
        "pretrained": True,
        "available": True,
        "text": f"ImageNet weights found ({resolved.source}: {resolved.path})",
    }


def download_allowed() -> bool:
    """The setting :mod:`training.weights` reads (``VIVA_ALLOW_WEIGHT_DOWNLOAD``)."""
    return _download_allowed()


def network_choices() -> list[tuple[str, str, int, bool]]:
    """``(name, description, default image size, has pretrained weights)`` of every
    registered network, EfficientNet B0–B7 first, test networks last."""
    specs = sorted(NETWORKS.values(), key=lambda s: (s.pretrained is None, s.name))
    return [(s.name, s.description, s.default_image_size, s.pretrained is not None) for s in specs]
