"""Training data of deep hashing: single-label images from the project's categories or
from an image-folder dataset (torch-free).

Deep hashing learns one class per image (softmax + triplets), while the archive's labels
are multi-label: an image positive for two of the chosen categories would be a positive
*and* a negative of itself, so such images are left out (and counted in the log).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.errors import TrainingError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class LabelledImages:
    """``files`` (relative to ``root``; ``root`` None = the media root), class
    ``labels`` (0 … K−1), the class map ``[{index, id, name}]`` and image ids (archive
    images only)."""

    files: list[str]
    labels: np.ndarray
    class_map: list[dict]
    root: str | None = None
    image_ids: np.ndarray | None = None
    source: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_map)

    def describe(self) -> str:
        if self.source.get("folder"):
            return f"the image folder {self.source['folder']}"
        return f"{self.num_classes} labelled categories"

    def ids_at(self, positions: np.ndarray) -> list:
        if self.image_ids is not None:
            return [int(self.image_ids[i]) for i in positions]
        return [self.files[i] for i in positions]


def _check(data: LabelledImages, min_positives: int, what: str) -> LabelledImages:
    if data.num_classes < 2:
        raise TrainingError(
            f"Deep hashing needs at least 2 {what} with {min_positives} or more images each; "
            f"found {data.num_classes}."
        )
    return data


def from_categories(category_ids, min_positives: int) -> LabelledImages:
    """Positive images of concept categories (all with ≥ ``min_positives`` positives when
    ``category_ids`` is empty)."""
    from annotation.models import Annotation, Category, Label

    positives = Annotation.objects.filter(
        value=Label.POSITIVE, face__isnull=True, category__kind=Category.Kind.CONCEPT
    )
    if category_ids:
        wanted = [int(c) for c in category_ids]
        found = set(Category.objects.filter(pk__in=wanted).values_list("pk", flat=True))
        missing = sorted(set(wanted) - found)
        if missing:
            raise TrainingError(f"Unknown categories: {', '.join(map(str, missing))}.")
        positives = positives.filter(category_id__in=wanted)
    pairs = list(positives.values_list("image_id", "category_id", "image__file"))
    per_image: dict[int, list[int]] = {}
    files: dict[int, str] = {}
    for image_id, category_id, file in pairs:
        per_image.setdefault(image_id, []).append(category_id)
        files[image_id] = file
    single = {i: cats[0] for i, cats in per_image.items() if len(cats) == 1}
    counts: dict[int, int] = {}
    for c in single.values():
        counts[c] = counts.get(c, 0) + 1
    keep = sorted(c for c, n in counts.items() if n >= min_positives)
    names = dict(Category.objects.filter(pk__in=keep).values_list("pk", "name"))
    index = {c: i for i, c in enumerate(keep)}
    chosen = sorted(i for i, c in single.items() if c in index)
    data = LabelledImages(
        files=[files[i] for i in chosen],
        labels=np.array([index[single[i]] for i in chosen], dtype=np.int64),
        class_map=[{"index": i, "id": c, "name": names[c]} for c, i in index.items()],
        image_ids=np.array(chosen, dtype=np.int64),
        source={
            "categories": keep,
            "multi_label_images_left_out": len(per_image) - len(single),
        },
    )
    return _check(data, min_positives, "categories")


def from_folder(folder: Path, min_positives: int) -> LabelledImages:
    """An image-folder dataset: ``folder/<class name>/<image files>`` (subfolders of a
    class folder count as the class), as for a large generic dataset."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingError(f"The dataset folder {folder} does not exist or is not a folder.")
    classes: list[tuple[str, list[str]]] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = sorted(
            str(p.relative_to(folder))
            for p in sub.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if len(images) >= min_positives:
            classes.append((sub.name, images))
    files, labels = [], []
    for i, (_name, images) in enumerate(classes):
        files += images
        labels += [i] * len(images)
    data = LabelledImages(
        files=files,
        labels=np.array(labels, dtype=np.int64),
        class_map=[{"index": i, "id": None, "name": name} for i, (name, _) in enumerate(classes)],
        root=str(folder.resolve()),
        source={"folder": str(folder.resolve())},
    )
    return _check(data, min_positives, "class folders")
