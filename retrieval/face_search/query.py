"""Query faces for the person similarity search: from an upload, a URL or an archive image.

A query picture may hold no face, one, or many; the page lets the user choose. What was
found is kept for an hour in annotation's result store (:func:`save_results`), keyed by a
token in the page's URL, so choosing a face, paging and "search the whole image instead"
need neither the upload again nor a second detection. Archive images that the face
pipeline has scanned use their stored ``Face`` rows (no model needed); others are analysed
on the fly with :func:`training.faces.pipeline.analyse_image` (imported lazily: torch).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

from annotation.acquisition import IncomingImage, load_results, save_results
from viva.media import media_path
from viva.models import Face, Image

RESULT_KIND = "faces"
PICTURE_MAX_SIDE = 1600  # the kept copy of an uploaded / fetched picture
CROP_SIDE = 160


class FaceQueryError(Exception):
    """The picture cannot be searched by face; the message is for the user."""


@dataclass
class QueryFace:
    """One face of a query picture; ``box`` in pixels of the original picture."""

    number: int
    box: list[float]
    score: float
    quality: float | None
    ok: bool
    reason: str = ""
    embedding: bytes | None = None  # float16 × 512, as Face.embedding
    crop: bytes | None = None  # JPEG, for uploads / URLs / unscanned images
    face_id: int | None = None  # a stored face of an archive image

    def vector(self) -> np.ndarray | None:
        return None if self.embedding is None else Face.unpack_embeddings([self.embedding])[0]

    def box_percent(self, width: int, height: int) -> dict[str, float]:
        """Box as CSS percentages of the picture (drawn over the scaled image)."""
        x1, y1, x2, y2 = self.box
        return {
            "left": round(100 * x1 / width, 3),
            "top": round(100 * y1 / height, 3),
            "width": round(100 * (x2 - x1) / width, 3),
            "height": round(100 * (y2 - y1) / height, 3),
        }


@dataclass
class FaceQuery:
    """A query picture and its faces (best first)."""

    source: str  # "upload" | "url" | "image"
    name: str
    width: int
    height: int
    faces: list[QueryFace] = field(default_factory=list)
    message: str = ""
    url: str = ""
    image_id: int | None = None
    picture: bytes | None = None  # JPEG copy of an upload / URL picture
    token: str = ""

    @property
    def usable(self) -> list[QueryFace]:
        return [f for f in self.faces if f.ok and f.embedding is not None]

    def face(self, number: int) -> QueryFace | None:
        return next((f for f in self.faces if f.number == number), None)


def _jpeg(image: PILImage.Image, max_side: int, quality: int = 85) -> bytes:
    image = image.convert("RGB")
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), PILImage.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def size_problem(width: int, height: int) -> str:
    """The face pipeline's message for pictures too small or too large ("" when fine)."""
    from training.faces.pipeline import image_problem

    return image_problem(width, height)


def analyse(picture: PILImage.Image) -> tuple[list[QueryFace], str]:
    """Detect, check and embed every face of ``picture``; raises FaceQueryError."""
    from training.faces.embed import embedder_source, install_advice
    from training.faces.pipeline import FaceModelUnavailable, analyse_image, describe_results

    if embedder_source() == "missing":
        # Never download weights inside a web request (minutes, or a hang when offline);
        # the indexing job in the worker may download them.
        raise FaceQueryError(
            "Searching by face is not possible: there are no face-recognition weights on "
            f"this machine. To enable it, {install_advice()}."
        )
    try:
        results = analyse_image(picture, embed=True)
    except FaceModelUnavailable as exc:
        raise FaceQueryError(str(exc)) from exc
    except ValueError as exc:  # too many pixels
        raise FaceQueryError(str(exc)) from exc
    faces = []
    for number, result in enumerate(results, start=1):
        embedding = None
        if result.ok and result.embedding is not None:
            embedding = Face.pack_embedding(result.embedding)
        faces.append(
            QueryFace(
                number=number,
                box=[float(v) for v in result.box],
                score=float(result.score),
                quality=None if result.quality is None else float(result.quality),
                ok=bool(result.ok and embedding is not None),
                reason=result.reason or ("" if embedding is not None else "no embedding"),
                embedding=embedding,
                crop=_jpeg(result.crop, CROP_SIDE) if result.crop is not None else None,
            )
        )
    return faces, describe_results(results)


def from_incoming(incoming: IncomingImage, source: str) -> FaceQuery:
    """A query from a validated upload / URL picture (nothing is stored in the archive)."""
    problem = size_problem(incoming.width, incoming.height)
    if problem:
        raise FaceQueryError(f"{incoming.name}: {problem}")
    picture = incoming.to_pil()
    faces, message = analyse(picture)
    return FaceQuery(
        source=source,
        name=incoming.name,
        width=picture.width,
        height=picture.height,
        faces=faces,
        message=message,
        url=incoming.url,
        picture=_jpeg(picture, PICTURE_MAX_SIDE),
    )


def from_image(image: Image) -> FaceQuery:
    """A query from an archive image: its stored faces, or a fresh detection."""
    query = FaceQuery(
        source="image",
        name=str(image),
        width=image.width,
        height=image.height,
        image_id=image.pk,
    )
    stored = list(image.faces.order_by("-quality", "pk"))
    if stored or image.faces_scanned_at is not None:
        for number, face in enumerate(stored, start=1):
            has_vector = face.embedding is not None
            query.faces.append(
                QueryFace(
                    number=number,
                    box=[float(v) for v in face.box],
                    score=float(face.score),
                    quality=face.quality,
                    ok=has_vector,
                    reason="" if has_vector else "not embedded yet",
                    embedding=bytes(face.embedding) if has_vector else None,
                    face_id=face.pk,
                )
            )
        query.message = _stored_message(query)
        return query
    problem = size_problem(image.width, image.height)
    if problem:
        raise FaceQueryError(problem)
    try:
        with PILImage.open(media_path(image.file)) as handle:
            # Upright, as the face index reads it (EXIF orientation applied).
            picture = (ImageOps.exif_transpose(handle) or handle).convert("RGB")
    except (OSError, ValueError) as exc:
        raise FaceQueryError(f"The image file cannot be read ({exc}).") from exc
    query.width, query.height = picture.size  # the boxes are in the upright picture
    query.faces, query.message = analyse(picture)
    return query


def _stored_message(query: FaceQuery) -> str:
    if not query.faces:
        return "No face was found in this image."
    usable = len(query.usable)
    if usable == 0:
        return "The faces of this image have no embeddings yet (the face index job runs)."
    if usable == 1:
        return "One usable face was found."
    return f"{usable} usable faces were found; the best one comes first."


def save(query: FaceQuery, user) -> str:
    data: dict[str, Any] = {"query": query}
    query.token = save_results(RESULT_KIND, data, user=user)
    return query.token


def load(token: str, user) -> FaceQuery | None:
    entry = load_results(RESULT_KIND, token, user=user)
    if entry is None or not isinstance(entry.get("query"), FaceQuery):
        return None
    query: FaceQuery = entry["query"]
    query.token = token
    return query
