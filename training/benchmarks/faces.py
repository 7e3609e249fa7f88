"""``manage.py bench faces``: the face-indexing pipeline vs bare MTCNN + embedding.

*Ours* is what the ``index_faces`` job does per chunk (:func:`training.faces.pipeline.
index_faces`): query the image rows, read and decode the JPEG files in a thread pool
overlapped with the networks, detect (MTCNN, batched per frame size), align (five-point
similarity transform), apply the quality filters, embed (InceptionResnetV1), write the
160-pixel thumbnails and the ``Face`` rows, and mark the images scanned.

The *baseline* is facenet-pytorch used bare, as its README does: ``MTCNN(keep_all=True)``
called on in-memory PIL images of the same frames (decoded beforehand, batched the same
way) and the same InceptionResnetV1 object on the crops it returns. Both count the faces
MTCNN detected; faces/s = detected faces / seconds.

Input is synthetic but realistic and offline: skimage's photographs (coffee, chelsea,
rocket …) as backgrounds at several keyframe sizes, with one to three real faces
(``astronaut()``, ``camera()``; scaled, mirrored, brightened) pasted in. The two alternate
chunk by chunk (which goes first alternates too), so a load change on a shared machine
hits both alike. The database is a temporary SQLite file and the media root a temporary
folder. DESIGN.md 7 asks ours/baseline ≥ 0.85.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageEnhance

ASTRONAUT_FACE = (160, 40, 290, 200)  # the astronaut's head in skimage's picture
CAMERA_FACE = (180, 95, 275, 215)
BACKGROUNDS = ("coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, default=96, help="Measured frames.")
    parser.add_argument("--chunk", type=int, default=32, help="Frames per measured chunk.")
    parser.add_argument("--warmup", type=int, default=1, help="Unmeasured chunks first.")
    parser.add_argument(
        "--sizes",
        default="640x360,960x540,1280x720",
        help="Frame sizes (keyframes of SD, qHD and HD video).",
    )
    parser.add_argument("--max-faces", type=int, default=3, help="Faces per frame: 1 … this.")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both (0: torch's default); 1 leaves the other core to "
        "decoding, as in bench inference.",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda:0 … or auto.")
    parser.add_argument("--seed", type=int, default=7)


def _face_sources() -> list[PILImage.Image]:
    from skimage import data

    astronaut = PILImage.fromarray(data.astronaut()).crop(ASTRONAUT_FACE)
    camera = PILImage.fromarray(data.camera()).convert("RGB").crop(CAMERA_FACE)
    return [astronaut, camera]


def _background(name: str, size: tuple[int, int]) -> PILImage.Image:
    from skimage import data

    picture = PILImage.fromarray(getattr(data, name)()).convert("RGB")
    return picture.resize(size, PILImage.Resampling.BILINEAR)


def synthetic_frames(n: int, sizes: list[tuple[int, int]], max_faces: int, seed: int):
    """``n`` RGB frames with 1 … ``max_faces`` pasted faces each (cells never overlap)."""
    rng = np.random.default_rng(seed)
    faces = _face_sources()
    backgrounds = {(name, size): _background(name, size) for name in BACKGROUNDS for size in sizes}
    frames = []
    for i in range(n):
        size = sizes[i % len(sizes)]
        frame = backgrounds[(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], size)].copy()
        count = int(rng.integers(1, max_faces + 1))
        cell_w = size[0] // count
        for k in range(count):
            face = faces[int(rng.integers(len(faces)))]
            height = int(min(size[1] * 0.8, rng.uniform(0.25, 0.6) * size[1]))
            width = min(cell_w - 4, round(height * face.width / face.height))
            height = round(width * face.height / face.width)
            patch = face.resize((width, height), PILImage.Resampling.BICUBIC)
            if rng.random() < 0.5:
                patch = patch.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
            patch = ImageEnhance.Brightness(patch).enhance(float(rng.uniform(0.8, 1.2)))
            x = k * cell_w + int(rng.integers(0, max(1, cell_w - width)))
            y = int(rng.integers(0, max(1, size[1] - height)))
            frame.paste(patch, (x, y))
        frames.append(frame)
    return frames


def _archive(media: Path, frames: list[PILImage.Image]) -> list[int]:
    """JPEG files under the media root and their image rows; returns the ids."""
    from viva.media import write_jpeg
    from viva.models import Collection, Image

    collection = Collection.objects.create(name="Bench faces")
    rows = []
    for i, frame in enumerate(frames):
        rel = f"bench/frame-{i:05d}.jpg"
        write_jpeg(frame, rel)
        rows.append(
            Image(
                collection=collection,
                file=rel,
                sha256=f"{i:064x}",
                width=frame.width,
                height=frame.height,
            )
        )
    Image.objects.bulk_create(rows)
    return list(Image.objects.order_by("pk").values_list("pk", flat=True))


class Baseline:
    """Bare facenet-pytorch: MTCNN on in-memory PIL images, then the embedding network."""

    def __init__(self, device, model):
        from facenet_pytorch import MTCNN

        self.device = device
        self.mtcnn = MTCNN(keep_all=True, device=device).eval()
        self.model = model

    def run(self, images: list[PILImage.Image], batch: int, embed_batch: int) -> int:
        import torch

        crops = []
        for start in range(0, len(images), batch):
            groups = defaultdict(list)
            for im in images[start : start + batch]:
                groups[im.size].append(im)
            for group in groups.values():
                for faces in self.mtcnn(group):
                    if faces is not None:
                        crops.append(faces)
        if not crops:
            return 0
        faces = torch.cat(crops)
        with torch.inference_mode():
            for s in range(0, len(faces), embed_batch):
                self.model(faces[s : s + embed_batch].to(self.device)).cpu()
        return len(faces)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(**opts) -> dict:
    import torch

    threads = torch.get_num_threads()
    try:
        return _run(opts)
    finally:
        torch.set_num_threads(threads)


def _run(opts: dict) -> dict:
    import torch
    from django.test.utils import override_settings

    from retrieval.benchmarks.inference import _temporary_database
    from training.devices import device_name, normalize_device
    from training.faces.embed import EMBED_BATCH, get_embedder
    from training.faces.pipeline import INDEX_BATCH, index_faces

    device = torch.device(normalize_device(opts["device"]))
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in opts["sizes"].split(",")]
    chunk = opts["chunk"]
    n_chunks = -(-opts["frames"] // chunk) + opts["warmup"]
    t0 = time.perf_counter()
    frames = synthetic_frames(chunk * n_chunks, sizes, opts["max_faces"], opts["seed"])
    with tempfile.TemporaryDirectory(prefix="bench-faces-") as tmp:
        folder = Path(tmp)
        media = folder / "media"
        with (
            override_settings(MEDIA_ROOT=media, VIVA_FACE_ALLOW_RANDOM_WEIGHTS=True),
            _temporary_database(folder / "bench.sqlite3"),
        ):
            ids = _archive(media, frames)
            # The baseline gets the same content the job reads: the decoded JPEG files.
            decoded = []
            for i in range(len(ids)):
                with PILImage.open(media / f"bench/frame-{i:05d}.jpg") as im:
                    decoded.append(im.convert("RGB"))
            prepare_s = time.perf_counter() - t0
            embedder = get_embedder(str(device))
            baseline = Baseline(device, embedder.model)
            ours_s = base_s = 0.0
            ours_faces = base_faces = stored = rejected = frames_done = 0
            for number in range(n_chunks):
                part = slice(number * chunk, (number + 1) * chunk)
                # Which goes first alternates, so caches and load trends favour neither.
                times = {}
                for who in ("ours", "base") if number % 2 == 0 else ("base", "ours"):
                    _sync(device)
                    start = time.perf_counter()
                    if who == "ours":
                        stats = index_faces(ids[part], device=str(device))
                    else:
                        found = baseline.run(decoded[part], INDEX_BATCH, EMBED_BATCH)
                    _sync(device)
                    times[who] = time.perf_counter() - start
                if number >= opts["warmup"]:
                    ours_s += times["ours"]
                    base_s += times["base"]
                    ours_faces += stats["faces"] + stats["rejected"]
                    stored += stats["faces"]
                    rejected += stats["rejected"]
                    base_faces += found
                    frames_done += stats["scanned"]
            from viva.models import Face

            rows = Face.objects.count()
    ours_fps = ours_faces / ours_s if ours_s else 0.0
    base_fps = base_faces / base_s if base_s else 0.0
    return {
        "ours_fps": round(ours_fps, 3),
        "baseline_fps": round(base_fps, 3),
        "ratio": round(ours_fps / base_fps, 4) if base_fps else 0.0,
        "ours_images_per_s": round(frames_done / ours_s, 3) if ours_s else 0.0,
        "baseline_images_per_s": round(frames_done / base_s, 3) if base_s else 0.0,
        "frames": frames_done,
        "faces_detected": ours_faces,
        "baseline_faces_detected": base_faces,
        "faces_stored": stored,
        "faces_rejected": rejected,
        "face_rows": rows,
        "embedder": embedder.source,
        "sizes": opts["sizes"],
        "chunk": chunk,
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "prepare_s": round(prepare_s, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
