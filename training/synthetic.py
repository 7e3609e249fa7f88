"""Coloured shapes as a tiny labelled archive: for tests, the demo and ``bench training``.

Three concepts ("red circle", "blue square", "green triangle") on noisy backgrounds;
every image is labelled positive for the shapes it shows and negative for one shape it
does not show (the kind of label review adds); the rest become weak negatives.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from PIL import Image as PILImage
from PIL import ImageDraw, ImageFilter

SHAPES = {
    "red circle": ((220, 30, 30), "circle"),
    "blue square": ((30, 60, 220), "square"),
    "green triangle": ((30, 170, 40), "triangle"),
}


def draw_shapes(names: list[str], size: tuple[int, int], rng: random.Random) -> PILImage.Image:
    w, h = size
    base = tuple(rng.randint(90, 200) for _ in range(3))
    img = PILImage.effect_noise((w, h), rng.uniform(20, 50)).convert("RGB")
    img = PILImage.blend(img, PILImage.new("RGB", (w, h), base), 0.6)
    draw = ImageDraw.Draw(img)
    for name in names:
        colour, shape = SHAPES[name]
        colour = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in colour)
        r = rng.uniform(0.15, 0.3) * min(w, h)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img.filter(ImageFilter.GaussianBlur(0.6))


def write_shape_files(
    folder: Path,
    n_per_concept: int,
    *,
    size: tuple[int, int] = (96, 72),
    seed: int = 0,
    pair_fraction: float = 0.1,
    quality: int = 90,
) -> list[tuple[Path, list[str]]]:
    """JPEG files with their shape names; a few images show two shapes."""
    rng = random.Random(seed)
    names = list(SHAPES)
    out = []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_per_concept * len(names)):
        shown = [names[i % len(names)]]
        if rng.random() < pair_fraction:
            shown.append(rng.choice([n for n in names if n not in shown]))
        path = folder / f"shape-{seed}-{i:05d}.jpg"
        draw_shapes(shown, size, rng).save(path, quality=quality)
        out.append((path, shown))
    return out


def make_shapes_archive(
    n_per_concept: int = 40,
    *,
    seed: int = 0,
    size: tuple[int, int] = (96, 72),
    collection_name: str = "Synthetic shapes",
    user=None,
) -> dict:
    """Import shape images into the archive and label them. Returns
    ``{"categories": {name: Category}, "images": [(Image, [shape names])]}``."""
    from annotation.labels import save_labels
    from annotation.models import Category
    from viva.ingest.importer import import_image
    from viva.models import Collection

    rng = random.Random(seed + 1)
    collection, _ = Collection.objects.get_or_create(
        name=collection_name, defaults={"kind": Collection.Kind.STILLS}
    )
    categories = {
        name: Category.objects.get_or_create(name=name, kind=Category.Kind.CONCEPT)[0]
        for name in SHAPES
    }
    images = []
    with tempfile.TemporaryDirectory() as tmp:
        for path, shown in write_shape_files(Path(tmp), n_per_concept, size=size, seed=seed):
            _, image = import_image(path, collection, original_name=path.name)
            images.append((image, shown))
    changes: dict[str, list[tuple[int, int]]] = {name: [] for name in SHAPES}
    for image, shown in images:
        for name in shown:
            changes[name].append((image.pk, 1))
        absent = [n for n in SHAPES if n not in shown]
        changes[rng.choice(absent)].append((image.pk, -1))
    for name, pairs in changes.items():
        save_labels(categories[name], pairs, user=user)
    return {"categories": categories, "images": images}
