"""Files under the media root: where each kind of file goes, hashing, thumbnails.

Paths stored in the database are relative to ``MEDIA_ROOT`` so the media volume can be
moved or mounted elsewhere without rewriting rows.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from django.conf import settings
from PIL import Image as PILImage

JPEG_QUALITY = 90


def media_path(rel: str) -> Path:
    return Path(settings.MEDIA_ROOT) / rel


def media_url(rel: str) -> str:
    return settings.MEDIA_URL + rel if rel else ""


def sha256_file(path: str | os.PathLike, chunk: int = 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sharded(prefix: str, sha256: str, suffix: str) -> str:
    """``prefix/ab/abcdef….suffix``: two-level fan-out keeps directories small."""
    return f"{prefix}/{sha256[:2]}/{sha256}{suffix}"


def write_jpeg(image: PILImage.Image, rel: str, quality: int = JPEG_QUALITY) -> Path:
    path = media_path(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    image.convert("RGB").save(tmp, "JPEG", quality=quality)
    os.replace(tmp, path)  # readers never see half-written files
    return path


def write_thumbnail(image: PILImage.Image, rel: str) -> Path:
    size = settings.VIVA_THUMB_SIZE
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size), PILImage.Resampling.BILINEAR)
    return write_jpeg(thumb, rel, quality=82)


def copy_into_media(src: str | os.PathLike, rel: str) -> Path:
    path = media_path(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, path)
    return path


def remove_quietly(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
