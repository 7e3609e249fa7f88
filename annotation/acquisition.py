"""Acquisition services: storing images from the web or from uploads, with their origins.

The pages (web search, upload / URL, similar images, sequence import) and the
``download_web_images`` job call these plain functions, so the rules live in one place:

* every byte from outside comes through :mod:`annotation.safe_fetch` (URLs) or is verified with
  Pillow before anything is written (uploads);
* images are stored with :func:`viva.ingest.importer.import_image`, which deduplicates by sha256:
  the same picture found under two URLs is one :class:`~viva.models.Image` with two
  :class:`~annotation.models.ImageOrigin` rows;
* every label goes through :func:`annotation.labels.save_labels` (event log, sources);
* everything a user clicked on is *signed* by the server (search results, preview addresses),
  so a client cannot make the server fetch an address the server never handed out.

Search results and similarity results are kept for a few hours in a file cache under
``var/`` (not in the session, which would grow by hundreds of kilobytes per search, and not in
process memory, which a second web worker would not see) so that paging works.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.core import signing
from django.core.cache.backends.filebased import FileBasedCache
from django.db import transaction
from PIL import Image as PILImage
from PIL import ImageOps

from viva.ingest.importer import ImportFailed, import_image
from viva.media import media_path
from viva.models import Collection, Image
from viva.signals import send_images_added

from . import safe_fetch
from .labels import save_labels
from .models import Candidate, Category, ImageOrigin, Source

log = logging.getLogger(__name__)

WEB_COLLECTION = "Web images"
UPLOAD_COLLECTION = "Uploads"

#: Byte limits: previews must stay cheap (the server fetches them for the user's browser);
#: downloads and uploads get the normal limit of safe_fetch.
PREVIEW_MAX_BYTES = 2 * 2**20
PREVIEW_NO_THUMB_MAX_BYTES = 8 * 2**20
PREVIEW_MAX_PIXELS = 25_000_000
PREVIEW_TIMEOUT = 5.0
PREVIEW_TOTAL_TIMEOUT = 10.0
PREVIEW_TTL = 24 * 3600
PREVIEW_ERROR_TTL = 10 * 60
#: Network trouble may pass quickly; such failures are remembered for a minute only.
PREVIEW_TRANSIENT_ERROR_TTL = 60
_TRANSIENT_CODES = frozenset({"dns", "connect", "timeout", "network", "http"})
PREVIEW_SIZES = {"thumb": 320, "large": 1280}
DOWNLOAD_MAX_BYTES = safe_fetch.DEFAULT_MAX_BYTES
DOWNLOAD_MAX_PIXELS = safe_fetch.DEFAULT_MAX_PIXELS
#: Images smaller than this are useless for training (original VIVA: 224 × 224); they are
#: refused when downloaded, since the engine's size claim is not always there or true.
DOWNLOAD_MIN_SIZE = (64, 64)

RESULTS_TTL = 12 * 3600
TOKEN_MAX_AGE = 7 * 24 * 3600

_SUFFIX_BY_FORMAT = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}


class AcquisitionError(Exception):
    """An image could not be acquired; the message is meant for the user."""


# --------------------------------------------------------------------------
# Collections, origins, candidates
# --------------------------------------------------------------------------


def _collection(name: str, kind: str, description: str) -> Collection:
    collection, _ = Collection.objects.get_or_create(
        name=name, defaults={"kind": kind, "description": description}
    )
    return collection


def web_collection() -> Collection:
    """The collection that holds images downloaded from web searches."""
    return _collection(
        WEB_COLLECTION,
        Collection.Kind.WEB,
        "Images found by the web search and downloaded because an annotator labelled them.",
    )


def upload_collection() -> Collection:
    """The collection that holds images uploaded or fetched by URL for labelling."""
    return _collection(
        UPLOAD_COLLECTION,
        Collection.Kind.UPLOAD,
        "Images uploaded (or fetched by URL) on the “Upload / URL” page.",
    )


def record_origin(
    image: Image,
    *,
    source: str,
    url: str = "",
    search_term: str = "",
    engine: str = "",
    category: Category | None = None,
    user=None,
) -> ImageOrigin:
    """Remember where an image came from; the same origin is stored once (idempotent jobs)."""
    user_id = user.pk if user is not None and getattr(user, "is_authenticated", False) else None
    origin, _ = ImageOrigin.objects.get_or_create(
        image=image,
        source=source,
        url=url[:2000],
        search_term=search_term[:300],
        engine=engine[:50],
        category=category,
        defaults={"user_id": user_id},
    )
    return origin


def add_candidates(
    category: Category,
    image_ids: Iterable[int],
    *,
    source: str,
    user=None,
    scores: dict[int, float] | None = None,
) -> int:
    """Propose images for labelling in ``category``; existing candidates are kept as they are.

    Returns how many were new. Idempotent, so a job or a form sent twice adds nothing twice.
    """
    ids = list(dict.fromkeys(int(i) for i in image_ids))
    if not ids:
        return 0
    user_id = user.pk if user is not None and getattr(user, "is_authenticated", False) else None
    before = Candidate.objects.filter(category=category, image_id__in=ids).count()
    for start in range(0, len(ids), 2000):
        chunk = ids[start : start + 2000]
        Candidate.objects.bulk_create(
            [
                Candidate(
                    category=category,
                    image_id=i,
                    source=source,
                    added_by_id=user_id,
                    score=(scores or {}).get(i),
                )
                for i in chunk
            ],
            ignore_conflicts=True,
        )
    added = Candidate.objects.filter(category=category, image_id__in=ids).count() - before
    # Hash codes / faces of what arrives are computed in the background (after commit).
    send_images_added(ids, category_id=category.pk, source=source)
    return added


# --------------------------------------------------------------------------
# Storing bytes as archive images
# --------------------------------------------------------------------------


def name_from_url(url: str) -> str:
    """A readable file name for an image that came from ``url``."""
    path = unquote(urlsplit(url).path or "")
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return (name or urlsplit(url).hostname or "image")[:200]


def store_image_bytes(
    content: bytes, collection: Collection, *, original_name: str, image_format: str = ""
) -> tuple[str, Image]:
    """Store verified image bytes with :func:`import_image` (sha256 dedup, thumbnail).

    Returns ``("imported" | "skipped", image)``. The bytes pass through a temporary file
    because the importer works on files (it is shared with the bulk import).
    """
    suffix = _SUFFIX_BY_FORMAT.get(image_format.upper(), Path(original_name).suffix or ".jpg")
    tmp_dir = Path(settings.FILE_UPLOAD_TEMP_DIR)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix="acquire-", suffix=suffix, dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        try:
            return import_image(tmp_name, collection, original_name=original_name[:500])
        except ImportFailed as exc:
            raise AcquisitionError(str(exc)) from exc
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def remove_image_files(images: Iterable[Image]) -> None:
    """Delete the files of images whose rows were rolled back (nothing half-stored)."""
    for image in images:
        for rel in (image.file, image.thumbnail):
            if rel:
                media_path(rel).unlink(missing_ok=True)


# --------------------------------------------------------------------------
# Signed tokens: what the server handed out, and nothing else
# --------------------------------------------------------------------------

_RESULT_SALT = "annotation.crawl.result"
_PREVIEW_SALT = "annotation.crawl.preview"


@dataclass(frozen=True)
class WebResult:
    """One web search result as the grid carries it (inside a signed key)."""

    url: str
    thumb: str | None
    term: str
    engine: str
    title: str = ""
    page: str | None = None

    def token(self) -> str:
        """The grid key: signed, so the save endpoint only downloads what the search found."""
        data = {"u": self.url, "t": self.thumb, "q": self.term, "e": self.engine}
        if self.title:
            data["n"] = self.title[:200]
        if self.page:
            data["p"] = self.page
        return signing.dumps(data, salt=_RESULT_SALT, compress=True)

    @classmethod
    def from_token(cls, token: str) -> WebResult:
        """Read a grid key; :class:`signing.BadSignature` if it was not made by this server."""
        data = signing.loads(str(token), salt=_RESULT_SALT, max_age=TOKEN_MAX_AGE)
        if not isinstance(data, dict) or not isinstance(data.get("u"), str):
            raise signing.BadSignature("Malformed result key.")
        return cls(
            url=data["u"],
            thumb=data.get("t"),
            term=str(data.get("q") or ""),
            engine=str(data.get("e") or ""),
            title=str(data.get("n") or ""),
            page=data.get("p"),
        )

    def as_params(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "thumb": self.thumb,
            "term": self.term,
            "engine": self.engine,
            "title": self.title,
        }


def preview_token(url: str, *, has_thumb: bool) -> str:
    """Signed preview address parameter (the proxy fetches only what it signed)."""
    return signing.dumps({"u": url, "h": int(has_thumb)}, salt=_PREVIEW_SALT, compress=True)


def read_preview_token(token: str) -> tuple[str, bool]:
    data = signing.loads(str(token), salt=_PREVIEW_SALT, max_age=TOKEN_MAX_AGE)
    if not isinstance(data, dict) or not isinstance(data.get("u"), str):
        raise signing.BadSignature("Malformed preview key.")
    return data["u"], bool(data.get("h"))


# --------------------------------------------------------------------------
# Result store: searches and similarity queries, for paging
# --------------------------------------------------------------------------


def _result_cache() -> FileBasedCache:
    directory = Path(settings.VAR_DIR) / "cache" / "acquire"
    return FileBasedCache(
        str(directory), {"TIMEOUT": RESULTS_TTL, "OPTIONS": {"MAX_ENTRIES": 5000}}
    )


def save_results(kind: str, data: dict[str, Any], *, user, result_id: str | None = None) -> str:
    """Keep a search's results for paging; returns the id to put into the page's URL."""
    result_id = result_id or uuid.uuid4().hex
    payload = {**data, "kind": kind, "user": user.pk, "saved_at": time.time()}
    _result_cache().set(f"{kind}:{result_id}", payload)
    return result_id


def load_results(kind: str, result_id: str, *, user) -> dict[str, Any] | None:
    """The stored results, or ``None`` if they expired or belong to someone else."""
    if not result_id or not result_id.isalnum() or len(result_id) > 64:
        return None
    data = _result_cache().get(f"{kind}:{result_id}")
    if not isinstance(data, dict) or data.get("user") != user.pk:
        return None
    return data


def update_results(kind: str, result_id: str, data: dict[str, Any], *, user) -> None:
    save_results(kind, data, user=user, result_id=result_id)


# --------------------------------------------------------------------------
# Preview proxy
# --------------------------------------------------------------------------


def _preview_dir() -> Path:
    return Path(settings.VAR_DIR) / "cache" / "previews"


def _prune_previews(directory: Path) -> None:
    """Remove expired previews now and then, so the cache cannot grow without bound."""
    limit = time.time() - PREVIEW_TTL
    for path in directory.glob("*/*"):
        try:
            if path.stat().st_mtime < limit:
                path.unlink(missing_ok=True)
        except OSError:
            continue


def fetch_preview(url: str, *, size: str = "thumb", has_thumb: bool = True) -> bytes:
    """A JPEG preview of the image at ``url``, fetched safely and cached briefly on disk.

    The image is re-encoded (never passed through), so whatever a foreign server sends
    cannot reach the user's browser except as pixels. Failures are cached for a few minutes
    (as a small ``.err`` file) so a broken thumbnail is not fetched again for every page view.
    Raises :class:`safe_fetch.FetchError`.
    """
    if size not in PREVIEW_SIZES:
        size = "thumb"
    key = hashlib.sha256(f"{size}\n{url}".encode()).hexdigest()
    directory = _preview_dir()
    path = directory / key[:2] / f"{key}.jpg"
    err_path = path.with_suffix(".err")
    now = time.time()
    try:
        if now - path.stat().st_mtime < PREVIEW_TTL:
            return path.read_bytes()
    except FileNotFoundError:
        pass
    try:
        age = now - err_path.stat().st_mtime
        code, _, message = err_path.read_text().partition("\n")
        ttl = PREVIEW_TRANSIENT_ERROR_TTL if code in _TRANSIENT_CODES else PREVIEW_ERROR_TTL
        if age < ttl:
            raise safe_fetch.FetchError(message, code=code)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    if size == "thumb":
        max_bytes = PREVIEW_MAX_BYTES if has_thumb else PREVIEW_NO_THUMB_MAX_BYTES
        timeout, total = PREVIEW_TIMEOUT, PREVIEW_TOTAL_TIMEOUT
    else:
        max_bytes, timeout, total = DOWNLOAD_MAX_BYTES, 10.0, 20.0
    try:
        fetched = safe_fetch.fetch_image(
            url,
            max_bytes=max_bytes,
            max_pixels=PREVIEW_MAX_PIXELS,
            timeout=timeout,
            total_timeout=total,
        )
        jpeg = _reencode(fetched.content, PREVIEW_SIZES[size])
    except safe_fetch.FetchError as exc:
        _atomic_write(err_path, f"{exc.code}\n{exc.message}".encode())
        raise
    _atomic_write(path, jpeg)
    if random.random() < 0.01:  # noqa: S311 - housekeeping, not security
        _prune_previews(directory)
    return jpeg


def _reencode(content: bytes, max_side: int) -> bytes:
    try:
        PILImage.init()
        formats = [f for f in safe_fetch.IMAGE_FORMATS if f in PILImage.OPEN]
        with PILImage.open(io.BytesIO(content), formats=formats) as image:
            image = ImageOps.exif_transpose(image) or image
            image = image.convert("RGB")
            image.thumbnail((max_side, max_side), PILImage.Resampling.BILINEAR)
            out = io.BytesIO()
            image.save(out, "JPEG", quality=80)
    except Exception as exc:  # noqa: BLE001 - verified images may still fail to decode
        raise safe_fetch.FetchError("The image could not be decoded.", code="not_image") from exc
    return out.getvalue()


def _atomic_write(path: Path, content: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.part")
    tmp.write_bytes(content)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Downloading labelled web results (the job's work)
# --------------------------------------------------------------------------


@dataclass
class DownloadReport:
    downloaded: list[dict] = field(default_factory=list)
    reused: list[dict] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    labels_saved: int = 0

    def as_dict(self) -> dict[str, Any]:
        ok = len(self.downloaded) + len(self.reused)
        summary = (
            f"{len(self.downloaded)} image(s) downloaded, {len(self.reused)} already stored, "
            f"{self.labels_saved} label(s) saved"
        )
        if self.removed:
            summary += f", {len(self.removed)} label(s) removed"
        if self.errors:
            summary += f", {len(self.errors)} failed"
        return {
            "downloaded": self.downloaded,
            "reused": self.reused,
            "removed": self.removed,
            "errors": self.errors,
            "labels_saved": self.labels_saved,
            "stored": ok,
            "summary": summary + ".",
        }


def _image_for_url(url: str) -> Image | None:
    """An image already downloaded from ``url`` by a web search (so a rerun downloads nothing)."""
    origin = (
        ImageOrigin.objects.filter(url=url[:2000], source=Source.CRAWLER)
        .select_related("image")
        .order_by("pk")
        .first()
    )
    return origin.image if origin else None


def download_web_image(result: WebResult) -> tuple[str, Image]:
    """Fetch one result with all safe-fetch limits and store it in the web collection."""
    fetched = safe_fetch.fetch_image(
        result.url,
        max_bytes=DOWNLOAD_MAX_BYTES,
        max_pixels=DOWNLOAD_MAX_PIXELS,
        min_size=DOWNLOAD_MIN_SIZE,
    )
    return store_image_bytes(
        fetched.content,
        web_collection(),
        original_name=name_from_url(fetched.final_url),
        image_format=fetched.format,
    )


def download_labelled_results(
    category: Category,
    items: Sequence[dict[str, Any]],
    *,
    user=None,
    on_progress: Callable[[int, str], None] | None = None,
) -> DownloadReport:
    """Download, store and label web results; the body of the ``download_web_images`` job.

    ``items`` are ``{"url", "thumb", "term", "engine", "title", "value"}``. Idempotent: an URL
    already downloaded by a web search is not fetched again, origins and candidates are stored
    once, and labels that are already set write nothing. Per-URL problems are collected in
    the report instead of stopping the job.
    """
    report = DownloadReport()
    for done, item in enumerate(items, start=1):
        url = str(item.get("url") or "")
        value = item.get("value")
        entry = {"url": url, "file": url}
        try:
            image = _image_for_url(url)
            if value is None:
                if image is not None:
                    saved = save_labels(
                        category, [(image.pk, None)], user=user, source=Source.CRAWLER
                    )
                    if saved.saved:
                        report.removed.append({**entry, "image_id": image.pk})
                continue
            if image is None:
                status, image = download_web_image(
                    WebResult(
                        url=url,
                        thumb=item.get("thumb"),
                        term=item.get("term", ""),
                        engine=item.get("engine", ""),
                    )
                )
            else:
                status = "skipped"
            record_origin(
                image,
                source=Source.CRAWLER,
                url=url,
                search_term=str(item.get("term") or ""),
                engine=str(item.get("engine") or ""),
                category=category,
                user=user,
            )
            add_candidates(category, [image.pk], source=Source.CRAWLER, user=user)
            saved = save_labels(category, [(image.pk, value)], user=user, source=Source.CRAWLER)
            report.labels_saved += saved.saved
            (report.downloaded if status == "imported" else report.reused).append(
                {**entry, "image_id": image.pk}
            )
        except (safe_fetch.FetchError, AcquisitionError) as exc:
            report.errors.append({**entry, "error": str(exc)})
        finally:
            if on_progress is not None:
                on_progress(done, url)
    return report


# --------------------------------------------------------------------------
# Upload / URL: bytes from the user, validated before anything is stored
# --------------------------------------------------------------------------


@dataclass
class IncomingImage:
    """A validated image from an upload or a URL, not stored yet."""

    content: bytes
    name: str
    format: str
    width: int
    height: int
    url: str = ""

    def to_pil(self) -> PILImage.Image:
        """The decoded picture, upright: EXIF orientation applied (phones store portraits
        sideways and rely on it), so faces are searched the way people see the photo."""
        image = PILImage.open(io.BytesIO(self.content))
        image.load()
        return ImageOps.exif_transpose(image) or image


def check_uploaded_bytes(content: bytes, name: str) -> IncomingImage:
    """Verify an uploaded file as an image (format, pixel limit, bombs) without storing it."""
    if len(content) > DOWNLOAD_MAX_BYTES:
        raise AcquisitionError(
            f"{name}: the file is larger than {DOWNLOAD_MAX_BYTES / 2**20:g} MB."
        )
    try:
        image_format, width, height = safe_fetch.verify_image(
            content, max_pixels=DOWNLOAD_MAX_PIXELS
        )
    except safe_fetch.FetchError as exc:
        raise AcquisitionError(f"{name}: {exc.message}") from exc
    return IncomingImage(content, name, image_format, width, height)


def fetch_urls(urls: Sequence[str], *, workers: int = 8) -> tuple[list[IncomingImage], list[str]]:
    """Fetch image URLs in parallel (bounded); returns the images and one error per bad URL.

    Runs inside a web request, so each URL gets at most 15 seconds and a few run at once: the
    page's 20 URLs cost at most about 45 seconds even when every host is slow.
    """

    def one(url: str) -> IncomingImage | str:
        try:
            fetched = safe_fetch.fetch_image(
                url,
                max_bytes=DOWNLOAD_MAX_BYTES,
                max_pixels=DOWNLOAD_MAX_PIXELS,
                timeout=10.0,
                total_timeout=15.0,
            )
        except safe_fetch.FetchError as exc:
            return f"{url}: {exc.message}"
        return IncomingImage(
            fetched.content,
            name_from_url(fetched.final_url),
            fetched.format,
            fetched.width,
            fetched.height,
            url=url,
        )

    if not urls:
        return [], []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(urls)))) as pool:
        answers = list(pool.map(one, urls))
    images = [a for a in answers if isinstance(a, IncomingImage)]
    errors = [a for a in answers if isinstance(a, str)]
    return images, errors


@dataclass
class AddReport:
    image_ids: list[int] = field(default_factory=list)
    imported: int = 0
    already_stored: int = 0
    new_candidates: int = 0
    labels_saved: int = 0


def add_images_to_category(
    incoming: Sequence[IncomingImage],
    category: Category,
    *,
    user=None,
    label_positive: bool = False,
) -> AddReport:
    """Store validated images (all or nothing), add them as candidates, optionally label them.

    Everything happens in one transaction; if anything fails, the rows are rolled back and
    the files written for new images are removed, so nothing is left half-stored.
    """
    report = AddReport()
    new_images: list[Image] = []
    try:
        with transaction.atomic():
            collection = upload_collection()
            for item in incoming:
                status, image = store_image_bytes(
                    item.content, collection, original_name=item.name, image_format=item.format
                )
                if status == "imported":
                    new_images.append(image)
                    report.imported += 1
                else:
                    report.already_stored += 1
                record_origin(
                    image, source=Source.UPLOAD, url=item.url, category=category, user=user
                )
                report.image_ids.append(image.pk)
            report.image_ids = list(dict.fromkeys(report.image_ids))
            report.new_candidates = add_candidates(
                category, report.image_ids, source=Source.UPLOAD, user=user
            )
            if label_positive:
                result = save_labels(
                    category, [(i, 1) for i in report.image_ids], user=user, source=Source.UPLOAD
                )
                report.labels_saved = result.saved
    except BaseException:
        remove_image_files(new_images)
        raise
    return report
