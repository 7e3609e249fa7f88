"""Training data as tensors: augmentation, the image Dataset and its DataLoader (torch).

The label matrix, the train/validation split and the dataset overview are the torch-free
:mod:`training.label_matrix` (the web pages read them); they are re-exported here so the
trainer and existing callers can keep importing them from ``training.dataset``.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from django.conf import settings
from PIL import Image as PILImage

from .constants import DEFAULT_SEED, IGNORE, NEG, POS, WEAK
from .label_matrix import (
    MAX_VAL_POSITIVE_FRACTION,
    VAL_NEGATIVE_FRACTION,
    VAL_POSITIVES,
    LabelMatrix,
    Split,
    build_label_matrix,
    concept_label_counts,
    dataset_overview,
    eligible_concepts,
    make_split,
    min_positives_setting,
    negative_quota,
    positive_quota,
    split_from_ids,
)
from .preprocessing import Preprocessing, to_uint8_tensor

__all__ = [
    # re-exported from training.constants / training.label_matrix
    "DEFAULT_SEED",
    "IGNORE",
    "MAX_VAL_POSITIVE_FRACTION",
    "NEG",
    "POS",
    "VAL_NEGATIVE_FRACTION",
    "VAL_POSITIVES",
    "WEAK",
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
    # torch
    "PREFETCH_FACTOR",
    "Augmentation",
    "Batch",
    "ImageFileDataset",
    "collate_skipping",
    "make_loader",
]

PREFETCH_FACTOR = 4  # batches each DataLoader worker keeps ready


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
