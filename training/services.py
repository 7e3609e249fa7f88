"""What the training pages call: start a run, list devices, read the dataset overview.

``start_training`` refuses — with a message and without creating a job — when no
concept has enough positives, when the device does not exist (any more), when the run
could not get its starting weights (:func:`check_start_weights`), when another run holds
the device (one run per device, as in the original), or when options are bad.

Torch-free at import time, like everything the pages import (see
:mod:`training.constants`).
"""

from __future__ import annotations

from django.db import transaction

from viva.jobs import start_job
from viva.models import Job

from .config import TrainConfig
from .devices import busy_job, device_exists, list_devices, normalize_device
from .errors import TrainingRefused
from .label_matrix import dataset_overview, eligible_concepts
from .network_specs import get_spec
from .weights import WeightsUnavailable, download_allowed, resolve_weights

JOB_KIND = "train_concepts"

__all__ = [
    "JOB_KIND",
    "check_start_weights",
    "dataset_overview",
    "list_devices",
    "start_training",
]


def check_start_weights(network: str, init: str) -> None:
    """Raise :class:`TrainingRefused` when a run of ``network`` starting from ``init``
    could only fail in the worker for want of weights:

    * ``init="pretrained"`` for a network without ImageNet weights (tests/demo networks);
    * ImageNet weights in neither ``VIVA_WEIGHTS_DIR`` nor the torch hub cache while
      downloading is switched off (``VIVA_ALLOW_WEIGHT_DOWNLOAD``).

    Nothing is downloaded here. With downloads allowed a missing file is accepted: the
    worker fetches it and, offline, fails with a message that says where to put the file.
    The look-up is on this machine's files: where the workers are other machines, give
    them and the web server the same ``VIVA_WEIGHTS_DIR``.
    """
    if init != "pretrained":
        return
    try:
        resolve_weights(network, "pretrained", allow_download=False)
    except WeightsUnavailable as exc:
        if get_spec(network).pretrained is None or not download_allowed():
            raise TrainingRefused(str(exc)) from exc


def start_training(user, options: dict | None = None) -> Job:
    """Validate ``options`` (see :class:`training.config.TrainConfig`; ``device`` is one
    of :func:`list_devices`' ids) and enqueue a ``train_concepts`` job on the GPU queue."""
    try:
        config = TrainConfig.from_options(options)
    except ValueError as exc:
        raise TrainingRefused(str(exc)) from exc
    config.device = normalize_device(config.device)
    threshold = config.resolved_min_positives
    if not eligible_concepts(threshold):
        raise TrainingRefused(
            f"No concept has at least {threshold} positive labels yet; label more images "
            "first (the dataset overview shows the counts)."
        )
    if not device_exists(config.device):
        raise TrainingRefused(
            f"The device {config.device} is not available (any more); reload the page and "
            "choose another one."
        )
    check_start_weights(config.network, config.init)
    with transaction.atomic():
        holder = busy_job(config.device)
        if holder is not None:
            raise TrainingRefused(
                f"{config.device} is busy with “{holder}” (job {holder.pk}, "
                f"{holder.get_status_display().lower()}); wait for it to finish or cancel "
                "it, or choose another device."
            )
        params = config.as_dict()
        job = start_job(JOB_KIND, params, user=user, title=f"Concept training on {config.device}")
        Job.objects.filter(pk=job.pk).update(device=config.device)
        job.device = config.device
    return job
