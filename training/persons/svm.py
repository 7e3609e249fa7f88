"""The person classifier: an RBF support vector machine on face embeddings with a
rejection threshold for unknown faces (thesis 6.3.3).

* :func:`make_svm` — scikit-learn ``SVC(kernel="rbf", probability=True,
  class_weight="balanced")``: Platt-scaled pairwise probabilities, coupled into one
  distribution per face; the best one is what the rejection threshold and retrieval use.
  scikit-learn 1.9 deprecates ``probability=True`` (removal in 1.11) in favour of
  ``CalibratedClassifierCV``, but that calibrates one-vs-rest scores and *normalises*
  them, which lifts strangers' scores: on synthetic identities it rejected 85 % of unknown
  faces at 86 % known acceptance, against 100 % / 100 % here. So we keep the coupled
  probabilities (the warning is silenced where we fit) until we write our own coupling.
* :func:`cross_validate` — stratified k-fold (5) cross-validation: every known face and
  every unknown face is scored exactly once by a model that did not see it. The
  out-of-fold scores give per-person AP (scikit-learn's ``average_precision_score``;
  unknown faces count as negatives of every person, so a model that gives strangers high
  scores is penalised) and calibrate the threshold.
* :func:`calibrate_threshold` — on the best class probability: with unknown faces, the
  threshold that maximises (share of known faces accepted + share of unknown faces
  rejected) / 2; without them, the value that accepts ``target_accept`` of the known faces.
* :class:`PersonModel` — the refit SVM, its class map and threshold; saved with joblib
  into the version folder (our own file, so loading it back is safe).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.svm import SVC

from .dataset import normalise

MODEL_FILE = "svm.joblib"
DEFAULT_C = 10.0
DEFAULT_TARGET_ACCEPT = 0.95
MAX_FOLDS = 5


class _SVC(SVC):
    """``SVC`` whose ``fit`` does not repeat the ``probability`` deprecation warning."""

    def fit(self, x, y, sample_weight=None):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*probability.*", category=FutureWarning)
            return super().fit(x, y, sample_weight=sample_weight)


def make_svm(y: np.ndarray | None = None, *, c: float = DEFAULT_C, seed: int = 0) -> SVC:
    """An unfitted RBF SVM with coupled probabilities (``y`` is accepted for callers that
    pass the labels; the model needs them only in ``fit``)."""
    return _SVC(
        kernel="rbf",
        C=c,
        gamma="scale",
        probability=True,
        class_weight="balanced",
        random_state=seed,
    )


@dataclass
class CrossValidation:
    """Out-of-fold results: ``scores`` (n, k) of the known faces, ``unknown_scores``
    (m, k) of the unknown faces, per-fold mAP."""

    scores: np.ndarray
    unknown_scores: np.ndarray
    folds: int
    fold_map: list[float] = field(default_factory=list)


def n_folds(y: np.ndarray) -> int:
    """Five folds, fewer when the smallest person has fewer than five faces."""
    smallest = int(np.bincount(y).min()) if len(y) else 0
    return max(2, min(MAX_FOLDS, smallest))


def per_class_ap(
    y: np.ndarray, scores: np.ndarray, unknown_scores: np.ndarray | None = None
) -> list[float | None]:
    """AP of each class column; unknown faces are negatives of every class."""
    k = scores.shape[1]
    if unknown_scores is not None and len(unknown_scores):
        scores = np.vstack([scores, unknown_scores])
        y = np.concatenate([y, np.full(len(unknown_scores), -1)])
    out: list[float | None] = []
    for c in range(k):
        truth = y == c
        out.append(float(average_precision_score(truth, scores[:, c])) if truth.any() else None)
    return out


def mean_ap(aps: list[float | None]) -> float | None:
    values = [a for a in aps if a is not None]
    return float(np.mean(values)) if values else None


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    unknown_x: np.ndarray,
    *,
    c: float = DEFAULT_C,
    seed: int = 0,
    on_fold: Callable[[int, int, float | None], None] | None = None,
) -> CrossValidation:
    """Stratified k-fold CV; ``on_fold(fold, folds, fold mAP)`` after each fold (progress,
    live chart, cancellation)."""
    k = int(y.max()) + 1
    folds = n_folds(y)
    scores = np.zeros((len(y), k), dtype=np.float64)
    unknown_scores = np.zeros((len(unknown_x), k), dtype=np.float64)
    known_split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)
    unknown_parts: list[np.ndarray] = [np.arange(0)] * folds
    if len(unknown_x) >= folds:
        unknown_parts = [
            test for _, test in KFold(folds, shuffle=True, random_state=seed).split(unknown_x)
        ]
    elif len(unknown_x):
        unknown_parts = [np.arange(len(unknown_x))] + [np.arange(0)] * (folds - 1)
    result = CrossValidation(scores, unknown_scores, folds)
    for fold, (train, test) in enumerate(known_split):
        model = make_svm(y[train], c=c, seed=seed).fit(x[train], y[train])
        cols = model.classes_  # every class is in every training fold (stratified)
        scores[np.ix_(test, cols)] = model.predict_proba(x[test])
        part = unknown_parts[fold]
        if len(part):
            unknown_scores[np.ix_(part, cols)] = model.predict_proba(unknown_x[part])
        fold_map = mean_ap(per_class_ap(y[test], scores[test], unknown_scores[part]))
        result.fold_map.append(fold_map if fold_map is not None else float("nan"))
        if on_fold is not None:
            on_fold(fold + 1, folds, fold_map)
    return result


@dataclass
class Threshold:
    value: float
    known_accept: float  # share of known faces whose best probability reaches it
    known_correct: float  # … and whose best person is the right one
    unknown_reject: float | None  # share of unknown faces below it (None: no unknowns)
    method: str


def rejection_rates(
    y: np.ndarray, scores: np.ndarray, unknown_scores: np.ndarray, threshold: float
) -> Threshold:
    """What ``threshold`` does to the out-of-fold scores."""
    best = scores.max(axis=1) if len(scores) else np.zeros(0)
    accepted = best >= threshold
    correct = accepted & (scores.argmax(axis=1) == y) if len(scores) else accepted
    reject = None
    if len(unknown_scores):
        reject = float(np.mean(unknown_scores.max(axis=1) < threshold))
    return Threshold(
        value=float(threshold),
        known_accept=float(accepted.mean()) if len(best) else 0.0,
        known_correct=float(correct.mean()) if len(best) else 0.0,
        unknown_reject=reject,
        method="manual",
    )


def calibrate_threshold(
    y: np.ndarray,
    scores: np.ndarray,
    unknown_scores: np.ndarray,
    *,
    target_accept: float = DEFAULT_TARGET_ACCEPT,
) -> Threshold:
    """Choose the rejection threshold on the best class probability (module docstring)."""
    known = scores.max(axis=1)
    if len(unknown_scores):
        unknown = unknown_scores.max(axis=1)
        candidates = np.unique(np.concatenate([known, unknown, [0.0]]))
        # Thresholds just above each score: a score equal to the threshold is accepted.
        accept = (known[None, :] >= candidates[:, None]).mean(axis=1)
        reject = (unknown[None, :] < candidates[:, None]).mean(axis=1)
        balanced = (accept + reject) / 2
        best = np.flatnonzero(balanced >= balanced.max() - 1e-12)
        # Every t in (candidates[i-1], candidates[i]] splits the scores as candidates[i]
        # does: take the middle of the widest such optimal gap, a margin on both sides.
        gaps = [candidates[i] - (candidates[i - 1] if i else candidates[i]) for i in best]
        i = int(best[int(np.argmax(gaps))])
        value = float((candidates[i - 1] + candidates[i]) / 2) if i else float(candidates[i])
        method = "balanced accuracy of known and unknown faces"
    else:
        value = float(np.quantile(known, 1.0 - target_accept)) if len(known) else 0.5
        method = f"accept {target_accept:.0%} of the known faces (no unknown faces labelled)"
    result = rejection_rates(y, scores, unknown_scores, value)
    result.method = method
    return result


def pr_curve_points(truth: np.ndarray, scores: np.ndarray, points: int = 50) -> dict:
    """A downsampled precision/recall curve for the evaluation page."""
    if not truth.any():
        return {}
    precision, recall, _ = precision_recall_curve(truth, scores)
    idx = np.unique(np.linspace(0, len(precision) - 1, min(points, len(precision))).astype(int))
    return {
        "precision": [round(float(p), 4) for p in precision[idx]],
        "recall": [round(float(r), 4) for r in recall[idx]],
    }


@dataclass
class Recognition:
    """Per face: best class index, its probability, and whether it passes the threshold."""

    index: np.ndarray
    probability: np.ndarray
    accepted: np.ndarray


@dataclass
class PersonModel:
    svm: SVC
    classes: list[dict]  # [{index, id, name}]
    threshold: float

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, k) probabilities in class-index order."""
        if not len(x):
            return np.zeros((0, len(self.classes)))
        proba = self.svm.predict_proba(normalise(x))
        out = np.zeros((len(x), len(self.classes)))
        out[:, self.svm.classes_] = proba
        return out

    def recognise(self, x: np.ndarray, threshold: float | None = None) -> Recognition:
        """Unknown faces (best probability below the threshold) are rejected."""
        threshold = self.threshold if threshold is None else threshold
        proba = self.probabilities(x)
        if not len(proba):
            empty = np.zeros(0)
            return Recognition(empty.astype(int), empty, empty.astype(bool))
        index = proba.argmax(axis=1)
        best = proba[np.arange(len(proba)), index]
        return Recognition(index, best, best >= threshold)

    def save(self, path: Path) -> None:
        import joblib

        with open(path, "wb") as fh:
            joblib.dump({"svm": self.svm, "classes": self.classes}, fh)

    @classmethod
    def load(cls, path: Path, threshold: float) -> PersonModel:
        """Our own file from the version folder (joblib unpickles: never load a file that
        did not come from :meth:`save`)."""
        import joblib

        data = joblib.load(path)
        return cls(svm=data["svm"], classes=data["classes"], threshold=float(threshold))
