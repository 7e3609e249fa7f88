"""Person recognition as services: start a run, train (cross-validate, calibrate, refit,
register), read and adjust the active model's rejection threshold.

The job handler (:mod:`training.persons.jobs`) and the page (:mod:`training.persons.views`)
only call these. scikit-learn is imported where a model is fitted or loaded, so the web
process' pages stay light.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from django.db import transaction
from django.db.models import Count

from viva.jobs import start_job
from viva.models import Face, Job

from ..errors import TrainingError, TrainingRefused
from ..models import ModelVersion
from ..registry import active_version, read_val_scores, save_version, version_dir
from . import dataset as ds

JOB_KIND = "train_persons"
KIND = ModelVersion.Kind.PERSON
CHART_POINTS = 4000  # best-probability samples sent to the page's threshold slider


# --- facts the pages show -----------------------------------------------------------------
def embedder_counts() -> dict[str, int]:
    """``{embedder: faces}`` of the embedded faces."""
    rows = (
        Face.objects.filter(embedding__isnull=False)
        .values_list("embedder")
        .order_by()
        .annotate(n=Count("pk"))
    )
    return {name or "unknown": n for name, n in rows}


def embedder_warning() -> str | None:
    """A warning when recognition would be meaningless: faces already embedded with
    random weights (tests/demo), or, before any face is embedded, a machine that would
    embed them so (or cannot embed them at all)."""
    counts = embedder_counts()
    random_faces = counts.get("random", 0)
    if random_faces:
        total = sum(counts.values())
        return (
            f"{random_faces} of {total} faces were embedded with random weights (tests/demo), "
            "not with the VGGFace2 FaceNet weights: person recognition trained on them is "
            "meaningless. Put the weights into VIVA_WEIGHTS_DIR and embed the faces again."
        )
    try:
        from training.faces.embed import embedder_source  # torch-free
    except ImportError:
        return None
    source = embedder_source()
    if source == "random":
        return (
            "The VGGFace2 FaceNet weights are not on this machine: faces would be embedded "
            "with random weights (tests/demo only), and recognition would be meaningless."
        )
    if source == "missing":
        return (
            "The VGGFace2 FaceNet weights are missing; faces cannot be embedded until they "
            "are in VIVA_WEIGHTS_DIR."
        )
    return None


def active_job() -> Job | None:
    return Job.objects.filter(kind=JOB_KIND, status__in=Job.ACTIVE).order_by("created_at").first()


# --- starting (web side) ------------------------------------------------------------------
def start_person_training(user, options: dict | None = None) -> Job:
    """One click: refuse (no job) with fewer than two eligible persons or while a run is
    going on; otherwise enqueue ``train_persons``."""
    options = dict(options or {})
    needed = int(options.get("min_faces") or ds.min_faces())
    statuses = ds.person_statuses(needed)
    if sum(1 for s in statuses if s.eligible) < 2:
        raise TrainingRefused(ds.not_enough_message(statuses, needed))
    with transaction.atomic():
        running = active_job()
        if running is not None:
            raise TrainingRefused(
                f"Person training job {running.pk} is already "
                f"{running.get_status_display().lower()}; wait for it or cancel it."
            )
        params = {"min_faces": needed, "max_faces": int(options.get("max_faces") or ds.max_faces())}
        if options.get("c"):
            params["c"] = float(options["c"])
        return start_job(JOB_KIND, params, user=user, title="Person recognition training")


# --- training (worker side) ---------------------------------------------------------------
def train_persons(ctx) -> dict:
    """Load the faces, cross-validate, calibrate the threshold, refit on all, register.

    ``ctx`` is a :class:`viva.jobs.JobContext` (params, progress, metric, log)."""
    from .svm import (
        MODEL_FILE,
        PersonModel,
        calibrate_threshold,
        cross_validate,
        make_svm,
        mean_ap,
        n_folds,
        per_class_ap,
        pr_curve_points,
    )

    params = ctx.params
    seed = int(params.get("seed", 0))
    c = float(params.get("c") or 10.0)
    started = time.monotonic()
    ctx.progress(0, 1, note="Reading the labelled faces …")
    cap = int(params.get("max_faces") or ds.max_faces())
    data = ds.load_dataset(needed=params.get("min_faces"), cap=cap, seed=seed)
    warning = embedder_warning()
    if warning:
        ctx.log("WARNING: " + warning)
    if data.other_embedder:
        ctx.log(
            f"WARNING: the faces come from different embedders {data.embedders}; "
            f"{data.other_embedder} faces not embedded by '{data.embedder or 'unknown'}' "
            "(the most common one) were left out: embeddings of different weights are "
            "not comparable."
        )
    ctx.log(
        f"{len(data.classes)} persons, {len(data.y)} faces (at most {cap} "
        f"per person), {len(data.unknown_x)} unknown faces to calibrate the rejection."
    )
    for cls in data.classes:
        ctx.log(f"  {cls['name']}: {cls['used']} of {cls['faces']} faces")
    if data.conflicts:
        ctx.log(f"{data.conflicts} faces are positive for two persons and were left out.")

    def on_fold(fold: int, folds: int, fold_map: float | None) -> None:
        ctx.progress(fold, folds + 1, note=f"Cross-validation: fold {fold} of {folds} done")
        if fold_map is not None:
            ctx.metric("fold mAP", fold, fold_map)
            ctx.log(f"Fold {fold}/{folds}: mAP {fold_map:.1%}")
        ctx.check_cancelled()

    ctx.progress(0, n_folds(data.y) + 1, note="Cross-validation: fold 1 …")
    cv = cross_validate(data.x, data.y, data.unknown_x, c=c, seed=seed, on_fold=on_fold)
    aps = per_class_ap(data.y, cv.scores, cv.unknown_scores)
    overall = mean_ap(aps)
    threshold = calibrate_threshold(data.y, cv.scores, cv.unknown_scores)
    ctx.log(
        f"Cross-validated mAP {overall:.1%}. Rejection threshold {threshold.value:.3f} "
        f"({threshold.method}): {threshold.known_accept:.1%} of known faces accepted"
        + (
            f", {threshold.unknown_reject:.1%} of unknown faces rejected."
            if threshold.unknown_reject is not None
            else "."
        )
    )
    ctx.progress(cv.folds, cv.folds + 1, note="Refitting on all faces …")
    ctx.check_cancelled()
    model = PersonModel(
        svm=make_svm(data.y, c=c, seed=seed).fit(data.x, data.y),
        classes=[{"index": k["index"], "id": k["id"], "name": k["name"]} for k in data.classes],
        threshold=threshold.value,
    )
    evaluations = []
    for cls, ap in zip(data.classes, aps, strict=True):
        truth = np.concatenate([data.y == cls["index"], np.zeros(len(data.unknown_x), bool)])
        column = np.concatenate([cv.scores[:, cls["index"]], cv.unknown_scores[:, cls["index"]]])
        evaluations.append(
            {
                "category_id": cls["id"],
                "category_name": cls["name"],
                "ap": ap,
                "n_val_pos": cls["used"],
                "n_val_neg": int(len(data.y) - cls["used"] + len(data.unknown_x)),
                "n_val_weak": 0,
                "pr_curve": pr_curve_points(truth, column),
            }
        )
    metrics = {
        "mAP": overall,
        "folds": cv.folds,
        "fold_mAP": cv.fold_map,
        "threshold": threshold.value,
        "calibrated_threshold": threshold.value,
        "threshold_method": threshold.method,
        "known_accept": threshold.known_accept,
        "known_correct": threshold.known_correct,
        "unknown_reject": threshold.unknown_reject,
        "faces": int(len(data.y)),
        "unknown_faces": int(len(data.unknown_x)),
        "persons": len(data.classes),
        "seconds": round(time.monotonic() - started, 2),
    }
    config = {
        "model": "svm-rbf",
        "C": c,
        "gamma": "scale",
        "threshold": threshold.value,
        "calibrated_threshold": threshold.value,
        "embedders": data.embedders,
        # Person inference scores only faces of this embedder (retrieval.persons.inference).
        "embedder": data.embedder,
    }
    version = save_version(
        kind=KIND,
        config=config,
        class_map=model.classes,
        split={
            "method": f"stratified {cv.folds}-fold cross-validation, then refit on all",
            "seed": seed,
            "face_ids": data.face_ids.tolist(),
            "unknown_face_ids": data.unknown_face_ids.tolist(),
        },
        metrics=metrics,
        evaluations=evaluations,
        train_config={**params, "max_faces": cap, "C": c, "seed": seed},
        weights_source={"text": f"embeddings from {data.embedder or 'unknown'}"},
        val_scores={
            "y": data.y,
            "scores": cv.scores.astype(np.float32),
            "unknown_scores": cv.unknown_scores.astype(np.float32),
        },
        previous=active_version(KIND),
        job=getattr(ctx, "job", None) if isinstance(getattr(ctx, "job", None), Job) else None,
        weights_file=MODEL_FILE,
        write_weights=model.save,
    )
    ctx.progress(cv.folds + 1, cv.folds + 1, note="Saved")
    summary = (
        f"{version} trained on {len(data.classes)} persons: cross-validated mAP "
        f"{overall:.1%}; rejection threshold {threshold.value:.2f}."
    )
    ctx.log(summary)
    return {
        "summary": summary,
        "model_version_id": version.pk,
        "version": version.version,
        "mAP": overall,
        "threshold": threshold.value,
        "known_accept": threshold.known_accept,
        "unknown_reject": threshold.unknown_reject,
        "active": version.is_active,
    }


# --- the active model ---------------------------------------------------------------------
def threshold_of(version: ModelVersion) -> float:
    return float((version.config or {}).get("threshold", 0.5))


def load_model(version: ModelVersion):
    """The :class:`~training.persons.svm.PersonModel` of a person version."""
    from .svm import PersonModel

    path: Path = version_dir(version) / Path(version.weights_path).name
    if not path.is_file():
        raise TrainingError(f"The classifier file of {version} is missing ({path.name}).")
    return PersonModel.load(path, threshold_of(version))


def threshold_curve(version: ModelVersion) -> dict | None:
    """Best-probability samples of the out-of-fold scores, for the page's slider:
    ``{"known": [...], "correct": [0/1 ...], "unknown": [...]}`` (subsampled)."""
    try:
        saved = read_val_scores(version)
    except (OSError, ValueError, KeyError):
        return None
    scores, y = saved["scores"], saved["y"]
    unknown = saved.get("unknown_scores", np.zeros((0, scores.shape[1])))
    rng = np.random.default_rng(0)
    keep = np.arange(len(scores))
    if len(keep) > CHART_POINTS:
        keep = np.sort(rng.choice(keep, CHART_POINTS, replace=False))
    ukeep = np.arange(len(unknown))
    if len(ukeep) > CHART_POINTS:
        ukeep = np.sort(rng.choice(ukeep, CHART_POINTS, replace=False))
    best = scores[keep].max(axis=1)
    return {
        "known": [round(float(v), 4) for v in best],
        "correct": [int(v) for v in (scores[keep].argmax(axis=1) == y[keep])],
        "unknown": [round(float(v), 4) for v in unknown[ukeep].max(axis=1)] if len(ukeep) else [],
    }


def set_threshold(version: ModelVersion, value: float) -> ModelVersion:
    """A trainer's adjustment: store ``value`` as the version's rejection threshold (the
    calibrated one stays in the config) and the rates it gives on the out-of-fold
    scores. The next person inference uses it."""
    from .svm import rejection_rates

    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise TrainingRefused("The threshold is a probability between 0 and 1.")
    if version.kind != KIND:
        raise TrainingRefused(f"{version} is not a person model.")
    metrics = dict(version.metrics or {})
    try:
        saved = read_val_scores(version)
        unknown = saved.get("unknown_scores", np.zeros((0, saved["scores"].shape[1])))
        rates = rejection_rates(saved["y"], saved["scores"], unknown, value)
        metrics.update(
            known_accept=rates.known_accept,
            known_correct=rates.known_correct,
            unknown_reject=rates.unknown_reject,
        )
    except (OSError, KeyError, ValueError):
        pass
    metrics["threshold"] = value
    config = {**(version.config or {}), "threshold": value}
    ModelVersion.objects.filter(pk=version.pk).update(config=config, metrics=metrics)
    version.config, version.metrics = config, metrics
    return version
