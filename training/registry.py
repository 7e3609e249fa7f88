"""Saving, activating and reading model versions (issue 4, item 6).

A version's files are written into a temporary folder beside the final one and renamed
into place (``var/models/<kind>/<version>/``) only when all of them are complete, in the
same database transaction that creates the row: a full disk or any other save error
leaves no half-written version, no row, and the previously active version active.

Activation policy: the newest *good* version becomes active — a run that finished,
evaluated and saved completely. It is not compared with the active version's mAP,
because the two were measured on different validation sets (labels change between runs,
so the split does too); the evaluation page shows both, and a trainer who prefers the
older model calls :func:`activate` on it. Exactly one version per kind is active
(a partial unique constraint enforces it).

The readers (:func:`list_versions`, :func:`compare_versions`, :func:`pr_curve`,
:func:`activate`, …) run in the web process, so this module imports torch only inside
the function that writes the weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from .errors import TrainingError
from .models import Evaluation, ModelVersion

WEIGHTS_FILE = "weights.pt"


def models_root() -> Path:
    return Path(getattr(settings, "VIVA_MODELS_DIR", Path(settings.VAR_DIR) / "models"))


def version_dir(version: ModelVersion) -> Path:
    return models_root() / version.directory


# --- saving ------------------------------------------------------------------------------
def _write_json(path: Path, data) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1, default=_json_default)
        fh.flush()
        os.fsync(fh.fileno())


def _json_default(value):
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_files(folder: Path, files: dict[str, Callable[[Path], None]]) -> None:
    for name, write in files.items():
        write(folder / name)


def _next_number(kind: str, root: Path) -> int:
    """Above every row *and* every folder: a folder left by a save whose transaction
    did not commit is never reused."""
    in_db = ModelVersion.objects.filter(kind=kind).aggregate(m=Max("version"))["m"] or 0
    on_disk = max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0)
    return max(in_db, on_disk) + 1


def save_version(
    *,
    kind: str = ModelVersion.Kind.CONCEPT,
    state_dict: dict | None = None,
    config: dict,
    class_map: list[dict],
    split: dict,
    metrics: dict,
    evaluations: list[dict],
    train_config: dict | None = None,
    weights_source: dict | None = None,
    val_scores: dict[str, np.ndarray] | None = None,
    previous: ModelVersion | None = None,
    job=None,
    activate_it: bool = True,
    weights_file: str = WEIGHTS_FILE,
    write_weights: Callable[[Path], None] | None = None,
) -> ModelVersion:
    """Write the files atomically, create the row and its evaluations, activate it.

    Models that are not torch networks (the person SVM) pass ``write_weights`` (called
    with the file's path) and their own ``weights_file`` name instead of ``state_dict``.

    ``evaluations``: dicts with ``category_id``, ``category_name``, ``ap``, ``n_val_pos``,
    ``n_val_neg``, ``n_val_weak``, ``pr_curve``. Raises :class:`TrainingError` with a
    plain message if anything fails; nothing is left behind then.
    """
    root = models_root() / kind
    tmp: Path | None = None
    final: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
        files: dict[str, Callable[[Path], None]] = {
            weights_file: write_weights or (lambda p: _save_weights(state_dict, p)),
            "config.json": lambda p: _write_json(p, config),
            "classes.json": lambda p: _write_json(p, class_map),
            "split.json": lambda p: _write_json(p, split),
            "metrics.json": lambda p: _write_json(p, metrics),
        }
        if val_scores is not None:
            files["val_scores.npz"] = lambda p: _save_npz(p, val_scores)
        _write_files(tmp, files)
        with transaction.atomic():
            number = _next_number(kind, root)
            final = root / str(number)
            os.rename(tmp, final)
            tmp = None
            rel = f"{kind}/{number}"
            version = ModelVersion.objects.create(
                kind=kind,
                version=number,
                directory=rel,
                weights_path=f"{rel}/{weights_file}",
                config=config,
                train_config=train_config or {},
                class_map=class_map,
                split_path=f"{rel}/split.json",
                split_summary={k: v for k, v in split.items() if not k.endswith("image_ids")},
                metrics=metrics,
                mean_ap=metrics.get("mAP"),
                weights_source=weights_source or {},
                previous=previous,
                job=job,
            )
            Evaluation.objects.bulk_create(
                Evaluation(model_version=version, **_evaluation_fields(e)) for e in evaluations
            )
            if activate_it:
                _activate(version)
        return version
    except Exception as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if (
            final is not None
            and final.exists()
            and not ModelVersion.objects.filter(
                kind=kind, directory=f"{kind}/{final.name}"
            ).exists()
        ):
            shutil.rmtree(final, ignore_errors=True)
        reason = "the disk is full" if getattr(exc, "errno", None) == 28 else str(exc)
        active = active_version(kind)
        still = f"version {active.version} stays active" if active else "no version is active"
        raise TrainingError(
            f"The trained model could not be saved ({type(exc).__name__}: {reason}). "
            f"Nothing was stored and {still}."
        ) from exc


def _save_weights(state_dict: dict, path: Path) -> None:
    import torch  # only the worker saves; the pages import this module without torch

    with open(path, "wb") as fh:
        torch.save(state_dict, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())


def _evaluation_fields(e: dict) -> dict:
    return {
        "category_id": e.get("category_id"),
        "category_name": e["category_name"],
        "ap": e.get("ap"),
        "n_val_pos": int(e.get("n_val_pos", 0)),
        "n_val_neg": int(e.get("n_val_neg", 0)),
        "n_val_weak": int(e.get("n_val_weak", 0)),
        "pr_curve": e.get("pr_curve") or {},
    }


# --- activation ---------------------------------------------------------------------------
def _activate(version: ModelVersion) -> None:
    now = timezone.now()
    ModelVersion.objects.filter(kind=version.kind, is_active=True).exclude(pk=version.pk).update(
        is_active=False
    )
    ModelVersion.objects.filter(pk=version.pk).update(is_active=True, activated_at=now)
    version.is_active, version.activated_at = True, now


def activate(version: ModelVersion | int) -> ModelVersion:
    """Make ``version`` the active one of its kind (a trainer's rollback)."""
    with transaction.atomic():
        if not isinstance(version, ModelVersion):
            version = ModelVersion.objects.select_for_update().get(pk=version)
        if not (models_root() / version.weights_path).is_file():
            raise TrainingError(
                f"The files of {version} are missing ({version.weights_path}); it cannot "
                "be activated."
            )
        _activate(version)
    return version


# --- reading -------------------------------------------------------------------------------
def active_version(kind: str = ModelVersion.Kind.CONCEPT) -> ModelVersion | None:
    return ModelVersion.objects.filter(kind=kind, is_active=True).first()


def list_versions(kind: str = ModelVersion.Kind.CONCEPT):
    """Newest first."""
    return ModelVersion.objects.filter(kind=kind).order_by("-version")


def baseline_for(version: ModelVersion) -> ModelVersion | None:
    """What a version is compared with: the version active when it was trained, else the
    next older one."""
    if version.previous_id:
        return version.previous
    return (
        ModelVersion.objects.filter(kind=version.kind, version__lt=version.version)
        .order_by("-version")
        .first()
    )


def compare_versions(
    version: ModelVersion, baseline: ModelVersion | None = None, *, use_default: bool = True
) -> dict:
    """Rows for the evaluation page: per concept the AP of ``version`` beside
    ``baseline``'s (default: :func:`baseline_for`) and the difference, plus both means.

    Note: each AP is measured on its own version's validation split.
    """
    if baseline is None and use_default:
        baseline = baseline_for(version)
    new = {e.category_name: e for e in version.evaluations.all()}
    old = {e.category_name: e for e in baseline.evaluations.all()} if baseline else {}
    rows = []
    for name in sorted(set(new) | set(old), key=str.lower):
        e, o = new.get(name), old.get(name)
        ap = e.ap if e else None
        prev = o.ap if o else None
        rows.append(
            {
                "category_id": (e or o).category_id,
                "name": name,
                "evaluation_id": e.pk if e else None,
                "ap": ap,
                "previous_ap": prev,
                "diff": (ap - prev) if ap is not None and prev is not None else None,
                "n_val_pos": e.n_val_pos if e else None,
                "n_val_neg": e.n_val_neg if e else None,
                "n_val_weak": e.n_val_weak if e else None,
            }
        )
    common = [r for r in rows if r["ap"] is not None and r["previous_ap"] is not None]
    return {
        "version": version,
        "baseline": baseline,
        "rows": rows,
        "mean_ap": version.mean_ap,
        "previous_mean_ap": baseline.mean_ap if baseline else None,
        "common_concepts": len(common),
        "mean_ap_common": _mean([r["ap"] for r in common]),
        "previous_mean_ap_common": _mean([r["previous_ap"] for r in common]),
    }


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def pr_curve(evaluation: Evaluation | int) -> dict:
    """``{"category", "ap", "precision": [...], "recall": [...]}`` for the chart."""
    if not isinstance(evaluation, Evaluation):
        evaluation = Evaluation.objects.get(pk=evaluation)
    return {
        "category": evaluation.category_name,
        "ap": evaluation.ap,
        **evaluation.pr_curve,
    }


def read_split(version: ModelVersion) -> dict:
    with open(models_root() / version.split_path) as fh:
        return json.load(fh)


def read_val_scores(version: ModelVersion) -> dict[str, np.ndarray]:
    with np.load(version_dir(version) / "val_scores.npz") as data:
        return {k: data[k] for k in data.files}
