"""The face pipeline (issue 7, DESIGN.md 5; thesis 6.3.3): detect (MTCNN) → align
(five-point similarity transform to 160×160) → quality filters → embed (FaceNet,
VGGFace2) → store.

Two entry points:

* :func:`analyse_image` for one picture in memory (query by face, uploads): every face
  found, best first, rejected ones with a reason;
* :func:`index_faces` for images of the archive: reads their files in a thread pool
  overlapped with detection and embedding, stores ``Face`` rows with thumbnails and
  float16 embeddings, and marks each image scanned (``Image.faces_scanned_at``), also
  when it has no face — that is what makes the indexing job resumable. Files that
  cannot be read stay unscanned, so a later job tries them again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

from .align import CROP_SIZE, align_face
from .detect import detect_batch
from .embed import FaceModelUnavailable, embedder_source, get_embedder
from .quality import Thresholds, assess

log = logging.getLogger(__name__)

__all__ = [
    "FaceModelUnavailable",
    "FaceResult",
    "analyse_image",
    "analyse_arrays",
    "describe_results",
    "embedder_source",
    "image_problem",
    "index_faces",
]

#: Faces kept per image at most (a crowd scene yields dozens of unusable faces).
MAX_FACES_PER_IMAGE = 50
#: Images per detection/embedding batch of :func:`index_faces`.
INDEX_BATCH = 16
#: Threads that read and decode files (and write thumbnails) ahead of the networks.
READ_THREADS = 2
#: Pixel limit of an image we analyse (larger ones are refused, like Pillow's bomb check).
MAX_PIXELS = 120_000_000


@dataclass
class FaceResult:
    """One detected face. ``box`` and ``landmarks`` are in pixels of the original image."""

    box: tuple[float, float, float, float]
    landmarks: list[list[float]] | None
    score: float
    quality: float
    ok: bool
    reason: str = ""
    embedding: np.ndarray | None = None
    crop: PILImage.Image | None = field(default=None, repr=False)


def image_problem(width: int, height: int) -> str:
    """Why an image of this size cannot yield a usable face ("" when it can)."""
    limits = Thresholds.from_settings()
    if min(width, height) < limits.min_size:
        return (
            f"The image is too small to find a face in ({width}×{height} pixels; a face "
            f"needs at least {limits.min_size} pixels)."
        )
    if width * height > MAX_PIXELS:
        return (
            f"The image is too large ({width}×{height} pixels); faces are searched in "
            f"images of up to {MAX_PIXELS // 1_000_000} megapixels."
        )
    return ""


def describe_results(results: list[FaceResult]) -> str:
    """One sentence for the user about what :func:`analyse_image` found."""
    usable = [r for r in results if r.ok]
    if not results:
        return "No face was found in this image."
    if not usable:
        return "A face was found, but it cannot be used: " + results[0].reason
    if len(usable) == 1:
        return "One usable face was found."
    return f"{len(usable)} usable faces were found; the best one comes first."


def to_rgb_array(image: PILImage.Image) -> np.ndarray:
    """``uint8`` (H, W, 3) RGB: greyscale, palette, alpha and 16-bit images included."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def analyse_arrays(
    arrays: list[np.ndarray], *, embed: bool = True, device: str = "cpu"
) -> list[list[FaceResult]]:
    """The pipeline on RGB arrays, batched: detection of all images, then one embedding
    pass over every usable face."""
    limits = Thresholds.from_settings()
    embedder = get_embedder(device) if embed else None  # fail early: no weights
    per_image: list[list[FaceResult]] = []
    todo: list[FaceResult] = []
    crops: list[np.ndarray] = []
    for array, found in zip(arrays, _detect(arrays, limits, device), strict=True):
        results = []
        for det in found[:MAX_FACES_PER_IMAGE]:
            crop = align_face(array, det.landmarks, det.box)
            quality, reason = assess(det.box, det.score, crop, limits)
            result = FaceResult(
                box=tuple(round(v, 2) for v in det.box),
                landmarks=None
                if det.landmarks is None
                else [[round(float(x), 2), round(float(y), 2)] for x, y in det.landmarks],
                score=round(det.score, 5),
                quality=round(quality, 4),
                ok=not reason,
                reason=reason,
                crop=PILImage.fromarray(crop),
            )
            results.append(result)
            if result.ok and embedder is not None:
                todo.append(result)
                crops.append(crop)
        # Usable faces first, then by quality: the caller shows the best face first.
        results.sort(key=lambda r: (not r.ok, -r.quality))
        per_image.append(results)
    if embedder is not None and crops:
        vectors = embedder.embed(np.stack(crops))
        for result, vector in zip(todo, vectors, strict=True):
            result.embedding = vector
    return per_image


def _detect(arrays: list[np.ndarray], limits: Thresholds, device: str):
    """Detections per array; arrays too small for a usable face are not searched."""
    big = [i for i, a in enumerate(arrays) if min(a.shape[:2]) >= limits.min_size]
    found = detect_batch([arrays[i] for i in big], device=device) if big else []
    out: list[list] = [[] for _ in arrays]
    for i, detections in zip(big, found, strict=True):
        out[i] = detections
    return out


def analyse_image(image: PILImage.Image, *, embed: bool = True) -> list[FaceResult]:
    """Every face of one picture, best first; quality-rejected faces have ``ok`` False
    and a ``reason``. Tiny images give ``[]`` (see :func:`image_problem` for the
    message). Raises :class:`FaceModelUnavailable` when ``embed`` and no weights."""
    from training.devices import normalize_device

    return analyse_arrays([to_rgb_array(image)], embed=embed, device=normalize_device("auto"))[0]


# --- indexing the archive ------------------------------------------------------------
@dataclass
class IndexStats:
    images: int = 0  # asked for
    skipped: int = 0  # scanned before (rescan False), or meanwhile by another job
    scanned: int = 0  # scanned now
    unreadable: int = 0  # files that could not be read: left unscanned, a later job retries
    too_large: int = 0  # over MAX_PIXELS: left unscanned
    faces: int = 0  # stored
    rejected: int = 0  # found but below the quality filters
    kept: int = 0  # faces of a rescanned image kept because they carry labels
    reembedded: int = 0  # kept faces found again: embedding, box, … updated in place
    predictions_dropped: int = 0  # person predictions deleted with replaced faces
    seconds: float = 0.0

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        data["seconds"] = round(self.seconds, 3)
        data["faces_per_s"] = round(self.faces / self.seconds, 3) if self.seconds else 0.0
        data["images_per_s"] = round(self.scanned / self.seconds, 3) if self.seconds else 0.0
        return data


#: What :func:`_read` returns instead of pixels.
UNREADABLE = "unreadable"
TOO_LARGE = "too large"


def _read(path) -> np.ndarray | str:
    """The RGB pixels of a file, upright (EXIF orientation applied, as phones store
    portraits sideways), or :data:`UNREADABLE` / :data:`TOO_LARGE`."""
    try:
        with PILImage.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                return TOO_LARGE
            return to_rgb_array(ImageOps.exif_transpose(im) or im)
    except Exception:  # noqa: BLE001 - missing, truncated, not an image: reported as unreadable
        return UNREADABLE


def _batches(rows: list, pool: ThreadPoolExecutor) -> Iterator[list[tuple]]:
    """``[(row, array or problem)]`` per batch; the next batch is decoded while the caller
    works on this one (file reading overlaps detection and embedding)."""
    from viva.media import media_path

    def submit(part):
        return [(row, pool.submit(_read, media_path(row.file))) for row in part]

    parts = [rows[i : i + INDEX_BATCH] for i in range(0, len(rows), INDEX_BATCH)]
    pending = [submit(p) for p in parts[:2]]
    for k in range(len(parts)):
        current = pending.pop(0)
        if k + 2 < len(parts):
            pending.append(submit(parts[k + 2]))
        yield [(row, fut.result()) for row, fut in current]


def thumbnail_name(image_id: int, box) -> str:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return f"faces/{image_id // 1000:04d}/{image_id}-{x1}-{y1}-{x2}-{y2}.jpg"


def _write_thumb(crop: PILImage.Image, rel: str) -> None:
    from viva.media import write_jpeg

    write_jpeg(crop, rel, quality=88)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _pending_ids(ids, rescan_before, *, lock: bool = False) -> set[int]:
    """Those of ``ids`` still to scan: never scanned, or (rescan) scanned before
    ``rescan_before``. ``lock``: inside a transaction, lock the rows (another indexing
    job waits until this one has stored its faces, then sees them scanned)."""
    from viva.models import Image

    from .jobs import pending

    rows = pending(Image.objects.filter(pk__in=list(ids)), rescan_before)
    if lock:
        rows = rows.select_for_update().order_by("pk")
    return set(rows.values_list("pk", flat=True))


def _log_problems(ctx, what: str, rows: list, why: str) -> None:
    if not rows:
        return
    ids = [r.pk for r in rows]
    log.warning("faces: %s image files %s", what, ids)
    if ctx is not None:
        ctx.log(
            f"{len(rows)} image file(s) {why} and were not scanned; a later indexing job "
            f"tries them again (image ids {', '.join(str(i) for i in ids[:10])}"
            f"{' …' if len(ids) > 10 else ''})."
        )


def index_faces(
    image_ids: list[int],
    *,
    ctx=None,
    rescan: bool = False,
    rescan_before=None,
    device: str | None = None,
) -> dict:
    """Detect, embed and store the faces of archive images (see the module docstring).

    Idempotent: images scanned before are skipped unless ``rescan``; a rescan covers
    images scanned before ``rescan_before`` (default: now) and replaces their faces, but
    keeps those that carry annotations — a new detection of such a face (IoU ≥ 0.5)
    updates it in place (embedding, embedder, box, thumbnail, …) instead of being stored
    twice. Whether an image is still to do is checked again, with its row locked, in the
    transaction that stores its faces, so two jobs at once never store a face twice.
    Files that cannot be read (or are too large) are left unscanned and untouched.
    With ``ctx`` (a job context) progress advances per batch of images and cancellation
    is checked between batches.
    """
    from django.db import transaction
    from django.utils import timezone

    from training.devices import normalize_device
    from viva.media import media_path, remove_quietly
    from viva.models import Face, Image

    started = time.perf_counter()
    device = normalize_device(device or "auto")
    if rescan and rescan_before is None:
        rescan_before = timezone.now()
    if not rescan:
        rescan_before = None
    stats = IndexStats(images=len(set(image_ids)))
    rows = Image.objects.filter(pk__in=_pending_ids(set(image_ids), rescan_before)).only(
        "pk", "file", "width", "height", "faces_scanned_at"
    )
    rows = list(rows.order_by("pk"))
    stats.skipped = stats.images - len(rows)
    if not rows:
        stats.seconds = time.perf_counter() - started
        return stats.as_dict()
    embedder = get_embedder(device)  # fail before reading anything when no weights
    embedder_name = embedder.source
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="faces-io") as pool:
        for batch in _batches(rows, pool):
            readable = [(row, arr) for row, arr in batch if isinstance(arr, np.ndarray)]
            # Cheap early check: another job may have done these meanwhile.
            still = _pending_ids([row.pk for row, _ in readable], rescan_before)
            stats.skipped += sum(1 for row, _ in readable if row.pk not in still)
            readable = [(row, arr) for row, arr in readable if row.pk in still]
            found = analyse_arrays([a for _, a in readable], device=device)
            by_image: dict[int, list[FaceResult]] = {}
            for (row, _arr), results in zip(readable, found, strict=True):
                by_image[row.pk] = results
            new_faces: list[Face] = []
            updated: list[Face] = []
            writes: list[Future] = []
            kept_faces: dict[int, list[Face]] = {}
            old_thumbs: set[str] = set()
            with transaction.atomic():
                todo = _pending_ids(by_image, rescan_before, lock=True)
                stats.skipped += len(by_image) - len(todo)
                if rescan and todo:
                    kept_faces, old_thumbs, dropped = _clear_for_rescan(sorted(todo))
                    stats.predictions_dropped += dropped
                for image_id in sorted(todo):
                    kept = list(kept_faces.get(image_id, []))
                    for r in by_image[image_id]:
                        if not r.ok:
                            stats.rejected += 1
                            continue
                        overlaps = [
                            (_iou(r.box, f.box), f)
                            for f in kept_faces.get(image_id, [])
                            if _iou(r.box, f.box) >= 0.5
                        ]
                        if overlaps:
                            free = [(iou, f) for iou, f in overlaps if f in kept]
                            if free:  # the labelled face, found again: refresh it
                                face = max(free, key=lambda t: t[0])[1]
                                kept.remove(face)
                                rel = thumbnail_name(image_id, r.box)
                                if rel != face.thumbnail:
                                    if face.thumbnail:
                                        old_thumbs.add(face.thumbnail)
                                writes.append(pool.submit(_write_thumb, r.crop, rel))
                                face.box = list(r.box)
                                face.landmarks = r.landmarks
                                face.score = r.score
                                face.quality = r.quality
                                face.thumbnail = rel
                                face.embedding = Face.pack_embedding(r.embedding)
                                face.embedder = embedder_name
                                updated.append(face)
                            continue  # never stored twice
                        rel = thumbnail_name(image_id, r.box)
                        writes.append(pool.submit(_write_thumb, r.crop, rel))
                        new_faces.append(
                            Face(
                                image_id=image_id,
                                box=list(r.box),
                                landmarks=r.landmarks,
                                score=r.score,
                                quality=r.quality,
                                thumbnail=rel,
                                embedding=Face.pack_embedding(r.embedding),
                                embedder=embedder_name,
                            )
                        )
                for fut in writes:  # thumbnails exist before their rows are visible
                    fut.result()
                Face.objects.bulk_create(new_faces, batch_size=500)
                if updated:
                    Face.objects.bulk_update(
                        updated,
                        [
                            "box",
                            "landmarks",
                            "score",
                            "quality",
                            "thumbnail",
                            "embedding",
                            "embedder",
                        ],
                        batch_size=500,
                    )
                Image.objects.filter(pk__in=sorted(todo)).update(faces_scanned_at=timezone.now())
            # Thumbnails of replaced faces go once the new rows are committed (a new
            # detection with the same box wrote the same file: that one stays).
            live = {f.thumbnail for f in new_faces} | {f.thumbnail for f in updated}
            live |= {f.thumbnail for faces in kept_faces.values() for f in faces}
            remove_quietly([media_path(rel) for rel in old_thumbs - live])
            n_kept = sum(len(v) for v in kept_faces.values())
            stats.kept += n_kept
            stats.reembedded += len(updated)
            stats.faces += len(new_faces)
            stats.scanned += len(todo)
            if n_kept > len(updated):
                log.info(
                    "faces: %d labelled face(s) not found again keep their old embedding",
                    n_kept - len(updated),
                )
            unreadable = [row for row, arr in batch if isinstance(arr, str) and arr == UNREADABLE]
            too_large = [row for row, arr in batch if isinstance(arr, str) and arr == TOO_LARGE]
            stats.unreadable += len(unreadable)
            stats.too_large += len(too_large)
            _log_problems(ctx, "unreadable", unreadable, "could not be read")
            _log_problems(
                ctx,
                "too large",
                too_large,
                f"are larger than {MAX_PIXELS // 1_000_000} megapixels",
            )
            if ctx is not None:
                ctx.advance(len(batch))
    if stats.predictions_dropped:
        message = (
            f"{stats.predictions_dropped} person prediction(s) referred to faces replaced "
            "by this rescan and were deleted: run person inference again."
        )
        log.warning("faces: %s", message)
        if ctx is not None:
            ctx.log(message)
    stats.seconds = time.perf_counter() - started
    return stats.as_dict()


def _clear_for_rescan(image_ids: list[int]) -> tuple[dict[int, list], set[str], int]:
    """Delete the faces of these images that carry no annotation; return those kept
    (labels are never lost silently), the thumbnails of those deleted and how many person
    predictions went with them (``Prediction.face`` cascades)."""
    from annotation.models import Annotation
    from retrieval.models import Prediction
    from viva.models import Face

    faces = Face.objects.filter(image_id__in=image_ids)
    labelled = set(
        Annotation.objects.filter(face__image_id__in=image_ids).values_list("face_id", flat=True)
    )
    kept: dict[int, list] = {}
    for face in faces.filter(pk__in=labelled).order_by("pk"):
        kept.setdefault(face.image_id, []).append(face)
    doomed = list(faces.exclude(pk__in=labelled).values_list("pk", "thumbnail"))
    thumbs = {t for _, t in doomed if t}
    dropped = 0
    if doomed:
        doomed_ids = [pk for pk, _ in doomed]
        # Through ``prediction_image`` (image, run): Prediction.face has no index.
        dropped = Prediction.objects.filter(image_id__in=image_ids, face_id__in=doomed_ids).count()
        Face.objects.filter(pk__in=doomed_ids).delete()
    return kept, thumbs, dropped


__all__ += ["CROP_SIZE", "IndexStats"]
