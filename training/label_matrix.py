"""Training data of concept models: label matrix, train/validation split, overview.

Torch-free (numpy and the ORM only): the web process reads the overview and the
eligibility rule from here; the torch side (image files → tensors, DataLoaders) is
:mod:`training.dataset`, which re-exports everything below.

The label matrix (6.3.3) has one row per usable image and one column per trainable
concept (a concept category with at least ``min_positives`` positive labels; 6.3.4
suggests 100, ``VIVA_TRAIN_MIN_POSITIVES``). Entry codes are those of
:mod:`training.constants`:

* ``POS``/``NEG`` — the image is labelled positive/negative for the concept;
* ``IGNORE`` — labelled neutral ("difficult"), or unlabelled on an image that is positive
  for no concept at all;
* ``WEAK`` — unlabelled for this concept, but positive for another concept (any concept
  category, trainable or not): most likely a negative, used with a low weight.

Images whose row is all ``IGNORE`` carry no information and are left out.

The split (6.3.5) puts, per concept, 30 positives and 20 % of its labelled negatives into
validation. The unit of the split is the *image* (an image cannot be trained on and
validated at once), so choices for one concept affect the others. Conflicts are
resolved like this, deterministically:

* all negative quotas are drawn first, then the positive ones: positives are the scarce
  resource, and drawing them last means a concept gets exactly its 30 (unless the
  negative picks of other concepts alone pulled in more);
* within each pass concepts go from the rarest (fewest positives) to the most
  frequent, so a rare concept gets its quota before frequent concepts take its images;
* images already in validation (picked earlier) count towards a concept's quota, and
  only the missing number is drawn from its remaining images; a concept may therefore
  end up with more than its quota in validation, never fewer (unless it has too few
  images);
* the positive quota is at most 30 % of a concept's positives, but at least one when
  it has two (with the thesis' threshold of 100 this never binds; with a demo
  threshold of 20 it keeps 14 for training);
* every concept draws from its own generator seeded with ``(seed, category id, pass)``.

The split (image ids, seed, rule, per-concept counts) is stored with each model version.

The dataset overview page does *not* draw the split (:func:`dataset_overview`): it
needs the label counts per concept from one grouped query and the number of labelled
images from a second one, and applies the quota rule above per concept — what the split
puts into validation for a concept whose images carry no labels of other concepts. See
:func:`dataset_overview` for how close that is to the real split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.db.models import Count, Q

from annotation.models import Annotation, Category
from viva.models import Image

from .constants import (
    DEFAULT_SEED,
    IGNORE,
    MAX_VAL_POSITIVE_FRACTION,
    NEG,
    POS,
    VAL_NEGATIVE_FRACTION,
    VAL_POSITIVES,
    WEAK,
)

__all__ = [
    "DEFAULT_SEED",
    "MAX_VAL_POSITIVE_FRACTION",
    "VAL_NEGATIVE_FRACTION",
    "VAL_POSITIVES",
    "LabelMatrix",
    "Split",
    "build_label_matrix",
    "concept_label_counts",
    "dataset_overview",
    "eligible_concepts",
    "make_split",
    "min_positives_setting",
    "negative_quota",
    "positive_quota",
    "split_from_ids",
]

_CHUNK = 5000


def min_positives_setting() -> int:
    return int(getattr(settings, "VIVA_TRAIN_MIN_POSITIVES", 100))


# --- label counts and matrix -----------------------------------------------------------------
def _concept_rows() -> np.ndarray:
    """All image-level concept labels as an (n, 3) array of (image, category, value)."""
    rows = _concept_labels().values_list("image_id", "category_id", "value")
    arr = np.fromiter((v for row in rows.iterator(chunk_size=20000) for v in row), dtype=np.int64)
    return arr.reshape(-1, 3)


def _concept_labels():
    """Image-level labels of concept categories (what the label matrix is built from)."""
    return Annotation.objects.filter(face__isnull=True, category__kind=Category.Kind.CONCEPT)


def _grouped_counts() -> dict[int, dict[str, int]]:
    """One grouped query: ``{category id: {"positives", "negatives", "neutral"}}`` of the
    concepts that have image-level labels."""
    grouped = (
        _concept_labels()
        .order_by()
        .values("category")
        .annotate(
            positives=Count("pk", filter=Q(value=1)),
            negatives=Count("pk", filter=Q(value=-1)),
            neutral=Count("pk", filter=Q(value=0)),
        )
    )
    return {
        row["category"]: {k: int(row[k]) for k in ("positives", "negatives", "neutral")}
        for row in grouped
    }


def concept_label_counts(rows: np.ndarray | None = None) -> dict[int, dict[str, int]]:
    """``{category id: {"positives", "negatives", "neutral"}}`` for every concept: from
    ``rows`` (see :func:`_concept_rows`) if given, else from one grouped query."""
    counts = {
        c: {"positives": 0, "negatives": 0, "neutral": 0}
        for c in Category.objects.filter(kind=Category.Kind.CONCEPT).values_list("pk", flat=True)
    }
    if rows is None:
        for cid, n in _grouped_counts().items():
            if cid in counts:
                counts[cid] = n
        return counts
    for value, key in ((1, "positives"), (-1, "negatives"), (0, "neutral")):
        ids, n = np.unique(rows[rows[:, 2] == value, 1], return_counts=True)
        for cid, count in zip(ids.tolist(), n.tolist(), strict=True):
            if cid in counts:
                counts[cid][key] = count
    return counts


def _resolve_threshold(min_positives: int | None) -> int:
    return min_positives_setting() if min_positives is None else int(min_positives)


def _is_eligible(positives: int, threshold: int) -> bool:
    return positives >= max(1, threshold)


def eligible_concepts(min_positives: int | None = None, rows: np.ndarray | None = None):
    """Concept categories with enough positives to be trained, in id order (counted in
    the database unless ``rows`` are given)."""
    threshold = _resolve_threshold(min_positives)
    counts = concept_label_counts(rows)
    ids = [c for c, n in counts.items() if _is_eligible(n["positives"], threshold)]
    return list(Category.objects.filter(pk__in=ids).order_by("pk"))


@dataclass
class LabelMatrix:
    image_ids: np.ndarray  # (N,) int64, ascending
    files: list[str]  # relative to MEDIA_ROOT, aligned with image_ids
    concept_ids: list[int]  # column order = class index of the model
    concept_names: list[str]
    targets: np.ndarray  # (N, K) int8 codes

    def __len__(self) -> int:
        return len(self.image_ids)

    def class_map(self) -> list[dict]:
        return [
            {"index": i, "id": cid, "name": name}
            for i, (cid, name) in enumerate(zip(self.concept_ids, self.concept_names, strict=True))
        ]

    def counts(self, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        t = self.targets if mask is None else self.targets[mask]
        return {
            "positives": (t == POS).sum(0),
            "negatives": (t == NEG).sum(0),
            "weak": (t == WEAK).sum(0),
        }


def build_label_matrix(
    min_positives: int | None = None,
    *,
    positive_images_only: bool = False,
    rows: np.ndarray | None = None,
) -> LabelMatrix:
    """The label matrix of all trainable concepts (see the module docstring)."""
    rows = _concept_rows() if rows is None else rows
    concepts = eligible_concepts(min_positives, rows)
    concept_ids = [c.pk for c in concepts]
    names = [c.name for c in concepts]
    column = {cid: i for i, cid in enumerate(concept_ids)}
    if not concept_ids:
        return LabelMatrix(np.zeros(0, np.int64), [], [], [], np.zeros((0, 0), np.int8))

    positive_images = np.unique(rows[rows[:, 2] == 1, 0])
    in_concepts = np.isin(rows[:, 1], concept_ids)
    labelled = np.unique(rows[in_concepts & (rows[:, 2] != 0), 0])
    image_ids = np.union1d(positive_images, labelled)
    if positive_images_only:
        image_ids = positive_images
    targets = np.full((len(image_ids), len(concept_ids)), IGNORE, dtype=np.int8)
    targets[np.isin(image_ids, positive_images)] = WEAK
    own = rows[in_concepts & np.isin(rows[:, 0], image_ids)]
    r = np.searchsorted(image_ids, own[:, 0])
    c = np.array([column[int(x)] for x in own[:, 1]], dtype=np.int64)
    code = np.select([own[:, 2] == 1, own[:, 2] == -1], [POS, NEG], IGNORE).astype(np.int8)
    targets[r, c] = code
    keep = (targets != IGNORE).any(axis=1)
    image_ids, targets = image_ids[keep], targets[keep]
    files = _files_of(image_ids)
    present = np.array([f is not None for f in files], dtype=bool)
    return LabelMatrix(
        image_ids[present],
        [f for f in files if f is not None],
        concept_ids,
        names,
        targets[present],
    )


def _files_of(image_ids: np.ndarray) -> list[str | None]:
    found: dict[int, str] = {}
    ids = image_ids.tolist()
    for start in range(0, len(ids), _CHUNK):
        found.update(
            Image.objects.filter(pk__in=ids[start : start + _CHUNK]).values_list("pk", "file")
        )
    return [found.get(i) for i in ids]


# --- split --------------------------------------------------------------------------------
@dataclass
class Split:
    seed: int
    val_mask: np.ndarray  # (N,) bool
    rule: dict = field(default_factory=dict)

    def indices(self) -> tuple[np.ndarray, np.ndarray]:
        return np.flatnonzero(~self.val_mask), np.flatnonzero(self.val_mask)

    def per_concept(self, matrix: LabelMatrix) -> list[dict]:
        train, val = matrix.counts(~self.val_mask), matrix.counts(self.val_mask)
        return [
            {
                "id": cid,
                "name": name,
                "train_positives": int(train["positives"][k]),
                "train_negatives": int(train["negatives"][k]),
                "train_weak": int(train["weak"][k]),
                "val_positives": int(val["positives"][k]),
                "val_negatives": int(val["negatives"][k]),
                "val_weak": int(val["weak"][k]),
            }
            for k, (cid, name) in enumerate(
                zip(matrix.concept_ids, matrix.concept_names, strict=True)
            )
        ]

    def as_dict(self, matrix: LabelMatrix) -> dict:
        """What ``split.json`` of a model version holds."""
        return {
            "seed": self.seed,
            "rule": self.rule,
            "train_image_ids": matrix.image_ids[~self.val_mask].tolist(),
            "val_image_ids": matrix.image_ids[self.val_mask].tolist(),
            "concepts": self.per_concept(matrix),
        }


def positive_quota(
    positives: int,
    *,
    val_positives: int = VAL_POSITIVES,
    max_val_positive_fraction: float = MAX_VAL_POSITIVE_FRACTION,
) -> int:
    """How many of a concept's ``positives`` the split puts into validation (at least)."""
    cap = math.floor(max_val_positive_fraction * positives)
    return min(val_positives, max(cap, 1 if positives >= 2 else 0))


def negative_quota(negatives: int, *, val_negative_fraction: float = VAL_NEGATIVE_FRACTION) -> int:
    """How many of a concept's labelled ``negatives`` go to validation (at least)."""
    return round(val_negative_fraction * negatives)


def make_split(
    matrix: LabelMatrix,
    seed: int = DEFAULT_SEED,
    *,
    val_positives: int = VAL_POSITIVES,
    val_negative_fraction: float = VAL_NEGATIVE_FRACTION,
    max_val_positive_fraction: float = MAX_VAL_POSITIVE_FRACTION,
) -> Split:
    """Seeded image-level split (6.3.5); conflicts as in the module docstring."""
    targets = matrix.targets
    n, k_total = targets.shape if targets.ndim == 2 else (0, 0)
    val = np.zeros(n, dtype=bool)
    n_pos = (targets == POS).sum(0) if n else np.zeros(k_total, int)
    order = sorted(range(k_total), key=lambda k: (int(n_pos[k]), matrix.concept_ids[k]))
    # Negatives first, then positives: positives are the scarce resource, and drawing them
    # last lets the images that negative picks pulled in count, so a concept gets exactly
    # its positive quota unless other picks alone exceed it.
    for code in (NEG, POS):
        for k in order:
            rng = np.random.default_rng(
                [int(seed) & 0xFFFFFFFF, int(matrix.concept_ids[k]), int(code == POS)]
            )
            members = np.flatnonzero(targets[:, k] == code)
            if code == POS:
                quota = positive_quota(
                    len(members),
                    val_positives=val_positives,
                    max_val_positive_fraction=max_val_positive_fraction,
                )
            else:
                quota = negative_quota(len(members), val_negative_fraction=val_negative_fraction)
            need = quota - int(val[members].sum())
            if need <= 0:
                continue
            free = members[~val[members]]
            chosen = rng.choice(free, size=min(need, len(free)), replace=False)
            val[chosen] = True
    rule = {
        "val_positives": val_positives,
        "val_negative_fraction": val_negative_fraction,
        "max_val_positive_fraction": max_val_positive_fraction,
        "order": (
            "negatives, then positives; rarest concept first; images already in validation count"
        ),
    }
    return Split(int(seed), val, rule)


def split_from_ids(matrix: LabelMatrix, val_image_ids: Sequence[int], seed: int) -> Split:
    """Re-create a stored split on a (possibly newer) label matrix."""
    return Split(int(seed), np.isin(matrix.image_ids, np.asarray(list(val_image_ids))))


# --- overview for the dataset page ------------------------------------------------------------
def dataset_overview(min_positives: int | None = None, seed: int = DEFAULT_SEED) -> dict:
    """Per-concept label counts, eligibility and the train/validation counts of a run
    started now, for the dataset page (opened on every visit, so it must stay cheap in an
    archive with millions of labels).

    It does not build the label matrix nor draw the split. Three queries:

    * the concept categories (ids and names);
    * one grouped query: positives/negatives/neutral per concept (image-level labels);
    * one distinct count: the images a run would use (positive for any concept, or a
      labelled negative of a trained concept — the rows of :func:`build_label_matrix`, up
      to images whose file is gone and images positive only for untrained concepts and
      neutral for every trained one).

    Training/validation per concept is the split rule applied arithmetically
    (:func:`positive_quota`: 30 positives, at most 30 % of them; :func:`negative_quota`:
    20 % of the labelled negatives); the rest trains. Those are exact for a concept whose
    images carry no labels of other trained concepts. Otherwise the real split (drawn by
    the trainer at the start of a run, stored with the model version) can put a few more
    of the concept's images into validation — an image drawn for one concept is validated
    for all — so its validation counts are at least these. ``val_images`` is the sum of
    the quotas (at most ``images``): an upper bound for the same reason;
    ``train_images`` is the rest.

    Why not a cache keyed by the latest label change: the page is the annotators' to-do
    list, opened right after labelling, so such a cache would miss on most visits, and a
    key that also catches deleted images, changed categories and bulk updates is as
    expensive as these queries.
    """
    threshold = _resolve_threshold(min_positives)
    names = dict(Category.objects.filter(kind=Category.Kind.CONCEPT).values_list("pk", "name"))
    grouped = _grouped_counts()
    empty = {"positives": 0, "negatives": 0, "neutral": 0}
    concepts = []
    for cid, name in names.items():
        n = grouped.get(cid, empty)
        eligible = _is_eligible(n["positives"], threshold)
        val_pos = positive_quota(n["positives"]) if eligible else 0
        val_neg = negative_quota(n["negatives"]) if eligible else 0
        concepts.append(
            {
                "id": cid,
                "name": name,
                **n,
                "eligible": eligible,
                "train_positives": n["positives"] - val_pos if eligible else 0,
                "train_negatives": n["negatives"] - val_neg if eligible else 0,
                "val_positives": val_pos,
                "val_negatives": val_neg,
            }
        )
    concepts.sort(key=lambda c: (-c["positives"], c["name"].lower()))
    eligible = [c for c in concepts if c["eligible"]]
    images = _used_image_count([c["id"] for c in eligible])
    val_images = min(images, sum(c["val_positives"] + c["val_negatives"] for c in eligible))
    totals = {
        "concepts": len(concepts),
        "eligible_concepts": len(eligible),
        "images": images,
        "train_images": images - val_images,
        "val_images": val_images,
        **{key: sum(c[key] for c in concepts) for key in ("positives", "negatives", "neutral")},
        **{
            key: sum(c[key] for c in eligible)
            for key in ("train_positives", "train_negatives", "val_positives", "val_negatives")
        },
    }
    return {
        "min_positives": threshold,
        "seed": seed,
        "val_positives": VAL_POSITIVES,
        "val_negative_fraction": VAL_NEGATIVE_FRACTION,
        "concepts": concepts,
        "totals": totals,
    }


def _used_image_count(eligible_ids: list[int]) -> int:
    """Images with a positive label (any concept) or a labelled negative of a trained
    concept; 0 when no concept is trained (see :func:`dataset_overview`)."""
    if not eligible_ids:
        return 0
    used = Q(value=1) | Q(value=-1, category_id__in=eligible_ids)
    return _concept_labels().filter(used).order_by().values("image_id").distinct().count()
