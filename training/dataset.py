"""Training data of concept models: label matrix, train/validation split, overview.

The label matrix (6.3.3) has one row per usable image and one column per trainable
concept (a concept category with at least ``min_positives`` positive labels; 6.3.4
suggests 100, ``VIVA_TRAIN_MIN_POSITIVES``). Entry codes are those of
:mod:`training.losses`:

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
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from django.conf import settings
from PIL import Image as PILImage

from annotation.models import Annotation, Category
from viva.models import Image

from .losses import IGNORE, NEG, POS, WEAK
from .preprocessing import Preprocessing, to_uint8_tensor

DEFAULT_SEED = 20220101
VAL_POSITIVES = 30
VAL_NEGATIVE_FRACTION = 0.2
MAX_VAL_POSITIVE_FRACTION = 0.3
_CHUNK = 5000
PREFETCH_FACTOR = 4  # batches each DataLoader worker keeps ready


def min_positives_setting() -> int:
    return int(getattr(settings, "VIVA_TRAIN_MIN_POSITIVES", 100))


# --- label counts and matrix -----------------------------------------------------------------
def _concept_rows() -> np.ndarray:
    """All image-level concept labels as an (n, 3) array of (image, category, value)."""
    rows = Annotation.objects.filter(
        face__isnull=True, category__kind=Category.Kind.CONCEPT
    ).values_list("image_id", "category_id", "value")
    arr = np.fromiter((v for row in rows.iterator(chunk_size=20000) for v in row), dtype=np.int64)
    return arr.reshape(-1, 3)


def concept_label_counts(rows: np.ndarray | None = None) -> dict[int, dict[str, int]]:
    """``{category id: {"positives", "negatives", "neutral"}}`` for every concept."""
    rows = _concept_rows() if rows is None else rows
    counts = {
        c: {"positives": 0, "negatives": 0, "neutral": 0}
        for c in Category.objects.filter(kind=Category.Kind.CONCEPT).values_list("pk", flat=True)
    }
    for value, key in ((1, "positives"), (-1, "negatives"), (0, "neutral")):
        ids, n = np.unique(rows[rows[:, 2] == value, 1], return_counts=True)
        for cid, count in zip(ids.tolist(), n.tolist(), strict=True):
            if cid in counts:
                counts[cid][key] = count
    return counts


def eligible_concepts(min_positives: int | None = None, rows: np.ndarray | None = None):
    """Concept categories with enough positives to be trained, in id order."""
    threshold = min_positives_setting() if min_positives is None else int(min_positives)
    counts = concept_label_counts(rows)
    ids = [c for c, n in counts.items() if n["positives"] >= max(1, threshold)]
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
                cap = math.floor(max_val_positive_fraction * len(members))
                quota = min(val_positives, max(cap, 1 if len(members) >= 2 else 0))
            else:
                quota = round(val_negative_fraction * len(members))
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
    """Per-concept label counts, eligibility and the train/validation counts that a run
    started now would use (for the bar chart of the dataset page)."""
    threshold = min_positives_setting() if min_positives is None else int(min_positives)
    rows = _concept_rows()
    counts = concept_label_counts(rows)
    matrix = build_label_matrix(threshold, rows=rows)
    split = make_split(matrix, seed)
    per = {c["id"]: c for c in split.per_concept(matrix)}
    names = dict(Category.objects.filter(kind=Category.Kind.CONCEPT).values_list("pk", "name"))
    concepts = []
    for cid, n in counts.items():
        s = per.get(cid, {})
        concepts.append(
            {
                "id": cid,
                "name": names.get(cid, ""),
                **n,
                "eligible": cid in per,
                "train_positives": s.get("train_positives", 0),
                "train_negatives": s.get("train_negatives", 0),
                "train_weak": s.get("train_weak", 0),
                "val_positives": s.get("val_positives", 0),
                "val_negatives": s.get("val_negatives", 0),
                "val_weak": s.get("val_weak", 0),
            }
        )
    concepts.sort(key=lambda c: (-c["positives"], c["name"].lower()))
    eligible = [c for c in concepts if c["eligible"]]
    totals = {
        "concepts": len(concepts),
        "eligible_concepts": len(eligible),
        "images": len(matrix),
        "train_images": int((~split.val_mask).sum()),
        "val_images": int(split.val_mask.sum()),
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


# --- images as tensors ----------------------------------------------------------------------
@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation (6.3.3 names brightness, mirroring, cropping, zooming
    and JPEG artefacts for the archive's historical material). No hue changes: colour
    can be what a concept is about."""

    flip: float = 0.5
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.25
    contrast: float = 0.25
    jpeg_probability: float = 0.3
    jpeg_quality: tuple[int, int] = (15, 60)

    def crop_box(self, width: int, height: int, rng: random.Random) -> tuple[float, ...]:
        """A random region (random resized crop, i.e. crop + zoom), as in torchvision."""
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.crop_scale)
            log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
            ratio = math.exp(rng.uniform(log_lo, log_hi)) * width / height
            w, h = math.sqrt(target * ratio), math.sqrt(target / ratio)
            if w <= width and h <= height:
                x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
                return (x, y, x + w, y + h)
        return (0.0, 0.0, float(width), float(height))

    def apply(self, img: PILImage.Image, pre: Preprocessing, rng: random.Random):
        out = pre.resize_image(img, self.crop_box(img.width, img.height, rng))
        if rng.random() < self.flip:
            out = out.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < self.jpeg_probability:
            buffer = io.BytesIO()
            out.save(buffer, "JPEG", quality=rng.randint(*self.jpeg_quality))
            buffer.seek(0)
            out = PILImage.open(buffer).convert("RGB")
        tensor = to_uint8_tensor(out)
        b = 1.0 + rng.uniform(-self.brightness, self.brightness)
        c = 1.0 + rng.uniform(-self.contrast, self.contrast)
        if abs(b - 1.0) > 1e-3 or abs(c - 1.0) > 1e-3:
            x = tensor.float()
            mean = x.mean()
            tensor = ((x - mean) * c + mean * b).clamp_(0, 255).to(torch.uint8)
        return tensor


class ImageFileDataset(torch.utils.data.Dataset):
    """Image files → (uint8 image, targets, index); an unreadable file yields
    ``(None, None, index, message)`` so :func:`collate_skipping` can drop and report it
    instead of failing the run."""

    def __init__(
        self,
        files: Sequence[str],
        targets: np.ndarray,
        preprocessing: Preprocessing,
        *,
        root: str | Path | None = None,
        augmentation: Augmentation | None = None,
    ):
        self.files = list(files)
        self.targets = torch.from_numpy(np.asarray(targets, dtype=np.int8))
        self.pre = preprocessing
        self.root = Path(root if root is not None else settings.MEDIA_ROOT)
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path = self.root / self.files[index]
        try:
            with self.pre.open(path) as img:
                if self.augmentation is not None:
                    image = self.augmentation.apply(img, self.pre, random)
                else:
                    image = to_uint8_tensor(self.pre.resize_image(img))
        except Exception as exc:  # noqa: BLE001 - truncated, missing, not an image …
            return None, None, index, f"{type(exc).__name__}: {exc}"
        return image, self.targets[index], index, ""


@dataclass
class Batch:
    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    failed: list[tuple[int, str]]

    def __len__(self) -> int:
        return len(self.indices)


def collate_skipping(items: list) -> Batch:
    good = [it for it in items if it[0] is not None]
    failed = [(it[2], it[3]) for it in items if it[0] is None]
    if not good:
        return Batch(
            torch.zeros(0, dtype=torch.uint8),
            torch.zeros(0, dtype=torch.int8),
            torch.zeros(0, dtype=torch.long),
            failed,
        )
    return Batch(
        torch.stack([it[0] for it in good]),
        torch.stack([it[1] for it in good]),
        torch.tensor([it[2] for it in good], dtype=torch.long),
        failed,
    )


def make_loader(
    dataset: ImageFileDataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int = DEFAULT_SEED,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose workers stay alive between epochs and prefetch a few batches,
    so decoding overlaps the forward/backward pass."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    extra = {}
    if num_workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": PREFETCH_FACTOR}
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate_skipping,
        generator=generator,
        drop_last=drop_last,
        pin_memory=pin_memory,
        **extra,
    )
