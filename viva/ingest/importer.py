"""Importing videos (shots + keyframes) and still images into the archive.

Each file is imported all-or-nothing: files are written first, rows are created in one
transaction, and a failure removes what was written, so there are never shots without
keyframes or rows pointing at missing files. Re-importing a file is a no-op (sha256).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from ..media import (
    copy_into_media,
    media_path,
    remove_quietly,
    sha256_file,
    sharded,
    write_jpeg,
    write_thumbnail,
)
from ..models import Collection, Image, Shot, Video
from .shots import VideoError, detect_shots, extract_frames, keyframe_indices

VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".ts", ".wmv"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
MAX_IMAGE_PIXELS = 80_000_000

Progress = Callable[[float], None]


class ImportFailed(Exception):
    """A file could not be imported; the message is meant for the user."""


@dataclass
class ImportReport:
    imported: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "imported": self.imported,
            "skipped": self.skipped,
            "errors": self.errors,
            "summary": (
                f"{len(self.imported)} imported, {len(self.skipped)} already in the archive, "
                f"{len(self.errors)} failed"
            ),
        }


def read_sidecar(path: Path) -> dict:
    """Optional ``<video>.json`` beside a video: title, date, year and free metadata."""
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.exists():
        return {}
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise ImportFailed(f"The metadata file {sidecar.name} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def guess_year(name: str) -> int | None:
    match = re.search(r"(?<!\d)(19[0-9]{2}|20[0-9]{2})(?!\d)", name)
    return int(match.group(1)) if match else None


def import_video(
    path: str | Path,
    collection: Collection,
    *,
    title: str = "",
    year: int | None = None,
    original_name: str = "",
    on_progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[str, Video]:
    """Import one video. Returns ("imported" | "skipped", video)."""
    path = Path(path)
    sha = sha256_file(path)
    existing = Video.objects.filter(sha256=sha).first()
    if existing:
        return "skipped", existing
    meta = read_sidecar(path)
    report = on_progress or (lambda fraction: None)

    def detect_progress(done: int, total: int) -> None:
        report(0.8 * done / max(total, 1))

    try:
        info, shots = detect_shots(path, on_progress=detect_progress, should_stop=should_stop)
    except VideoError as exc:
        raise ImportFailed(str(exc)) from exc

    per_shot = settings.VIVA_KEYFRAMES_PER_SHOT
    plan: dict[int, int] = {}  # frame → shot number
    for number, (start, end) in enumerate(shots, start=1):
        for frame in keyframe_indices(start, end, per_shot):
            plan[frame] = number

    written: list[Path] = []
    video_rel = sharded("videos", sha, path.suffix.lower() or ".mp4")
    keyframes: list[dict] = []
    try:
        written.append(copy_into_media(path, video_rel))
        for i, (frame, picture) in enumerate(extract_frames(path, sorted(plan))):
            base = f"keyframes/{sha[:2]}/{sha}/{frame:07d}"
            written.append(write_jpeg(picture, base + ".jpg"))
            written.append(write_thumbnail(picture, base + "_t.jpg"))
            keyframes.append(
                {
                    "frame": frame,
                    "file": base + ".jpg",
                    "thumb": base + "_t.jpg",
                    "w": picture.width,
                    "h": picture.height,
                    "sha": sha256_file(media_path(base + ".jpg")),
                }
            )
            report(0.8 + 0.2 * (i + 1) / max(len(plan), 1))
        if not keyframes:
            raise ImportFailed("No frame of this video could be decoded.")
        # Shots whose keyframes could not be decoded are dropped rather than stored empty.
        decoded_shots = {plan[k["frame"]] for k in keyframes}
        with transaction.atomic():
            video = Video.objects.create(
                collection=collection,
                title=title or meta.get("title") or path.stem.replace("_", " "),
                file=video_rel,
                original_name=original_name or path.name,
                sha256=sha,
                size_bytes=path.stat().st_size,
                date=meta.get("date") or None,
                year=year or meta.get("year") or guess_year(original_name or path.name),
                fps=info.fps,
                n_frames=info.n_frames,
                duration_ms=info.duration_ms,
                width=info.width,
                height=info.height,
                metadata=meta.get("metadata", {}),
            )
            shot_rows = {}
            for number, (start, end) in enumerate(shots, start=1):
                if number not in decoded_shots:
                    continue
                shot_rows[number] = Shot(
                    video=video,
                    number=number,
                    start_frame=start,
                    end_frame=end,
                    start_ms=video.frame_to_ms(start),
                    end_ms=video.frame_to_ms(end + 1),
                )
            Shot.objects.bulk_create(shot_rows.values())
            Image.objects.bulk_create(
                Image(
                    collection=collection,
                    video=video,
                    shot=shot_rows[plan[k["frame"]]],
                    frame=k["frame"],
                    time_ms=video.frame_to_ms(k["frame"]),
                    file=k["file"],
                    thumbnail=k["thumb"],
                    sha256=k["sha"],
                    width=k["w"],
                    height=k["h"],
                )
                for k in keyframes
            )
    except IntegrityError:
        # Another worker imported the same file at the same moment; its files are ours.
        return "skipped", Video.objects.get(sha256=sha)
    except VideoError as exc:
        remove_quietly(written)
        raise ImportFailed(str(exc)) from exc
    except BaseException:
        remove_quietly(written)
        raise
    return "imported", video


def open_image_checked(path: Path) -> PILImage.Image:
    """Open and fully verify an image, refusing decompression bombs before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(path) as probe:
                if probe.width * probe.height > MAX_IMAGE_PIXELS:
                    raise ImportFailed(
                        f"The image is too large ({probe.width}×{probe.height} pixels)."
                    )
                probe.verify()
            picture = PILImage.open(path)
            picture.load()
    except ImportFailed:
        raise
    except (
        UnidentifiedImageError,
        PILImage.DecompressionBombError,
        PILImage.DecompressionBombWarning,
    ) as exc:
        raise ImportFailed(f"Not a readable image ({exc}).") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImportFailed(f"The image file is damaged or truncated ({exc}).") from exc
    return picture


def import_image(
    path: str | Path, collection: Collection, *, original_name: str = ""
) -> tuple[str, Image]:
    """Import one still image; an identical image already stored is reused ("skipped")."""
    path = Path(path)
    sha = sha256_file(path)
    existing = Image.objects.filter(sha256=sha, video__isnull=True).first()
    if existing:
        return "skipped", existing
    picture = open_image_checked(path)
    suffix = path.suffix.lower() if path.suffix.lower() in IMAGE_SUFFIXES else ".jpg"
    rel = sharded("images", sha, suffix)
    thumb_rel = sharded("thumbs", sha, ".jpg")
    written: list[Path] = []
    try:
        written.append(copy_into_media(path, rel))
        written.append(write_thumbnail(picture, thumb_rel))
        with transaction.atomic():
            image = Image.objects.create(
                collection=collection,
                file=rel,
                thumbnail=thumb_rel,
                sha256=sha,
                width=picture.width,
                height=picture.height,
                original_name=original_name or path.name,
            )
    except IntegrityError:
        # The same picture was stored by a concurrent import; its files are identical.
        return "skipped", Image.objects.get(sha256=sha, video__isnull=True)
    except BaseException:
        remove_quietly(written)
        raise
    return "imported", image


def expand_paths(paths: list[str], suffixes: set[str]) -> list[Path]:
    """Files as given plus the matching files inside given folders, sorted."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(
                sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in suffixes)
            )
        else:
            found.append(p)
    return found
