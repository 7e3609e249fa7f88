"""Images → permuted 256-bit hash codes with a registered hashing model.

The web process imports this module (query by example) without loading torch: torch, the
network and the weights are loaded the first time :func:`load_encoder` builds an encoder,
and the last encoder built is kept per process (one network in memory).

Every code is permuted by the version's stored bit permutation (:mod:`.bits`), so it is
ready for any index backend. A version without a valid permutation is refused: its codes
would put arbitrary bits into the coarse stage and silently spoil the search.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from annotation.similarity import IndexNotBuilt, SimilarityError

from ..search.base import CODE_BITS, CODE_BYTES
from .bits import check_permutation

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from PIL import Image as PILImage

    from training.models import ModelVersion

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "HashEncoder",
    "HashingModelMissing",
    "clear_cache",
    "load_encoder",
]

DEFAULT_BATCH_SIZE = 32

MISSING_MESSAGE = (
    "No hashing model exists yet, so images cannot be turned into hash codes for the "
    "similarity search. A trainer can fit unsupervised codes with one click on the "
    "“Hash codes” page (Train → Hash codes); the archive is indexed afterwards."
)


class HashingModelMissing(IndexNotBuilt):
    """There is no (active) hashing model."""

    def __init__(self, message: str = MISSING_MESSAGE) -> None:
        super().__init__(message)


_cache: dict[tuple[int, str], HashEncoder] = {}
_lock = threading.Lock()


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def stored_permutation(version: ModelVersion) -> np.ndarray:
    """The version's bit permutation, or :class:`SimilarityError` saying why it is unusable."""
    perm = (version.config or {}).get("permutation")
    if perm is None:
        raise SimilarityError(
            f"{version} has no stored bit permutation (the choice of the 64 coarse bits), so "
            "its codes cannot be indexed. Fit new hash codes or train a new hashing model on "
            "the “Hash codes” page."
        )
    try:
        return check_permutation(np.asarray(perm))
    except ValueError as exc:
        raise SimilarityError(
            f"{version} has an unusable bit permutation ({exc}); fit new hash codes or train "
            "a new hashing model on the “Hash codes” page."
        ) from exc


def load_encoder(version: ModelVersion | None = None, *, device: str | None = None) -> HashEncoder:
    """The encoder of ``version`` (default: the active hashing version), cached."""
    from training.models import ModelVersion

    if version is None:
        version = ModelVersion.objects.filter(
            kind=ModelVersion.Kind.HASHING, is_active=True
        ).first()
        if version is None:
            raise HashingModelMissing()
    key = (version.pk, device or "")
    with _lock:
        encoder = _cache.get(key)
        if encoder is not None:
            return encoder
    if version.kind != ModelVersion.Kind.HASHING:
        raise SimilarityError(f"{version} is not a hashing model.")
    perm = stored_permutation(version)
    bits = int((version.config or {}).get("bits", CODE_BITS))
    if bits != CODE_BITS:
        raise SimilarityError(
            f"{version} makes {bits}-bit codes; the index needs {CODE_BITS}-bit codes."
        )
    with _lock:
        encoder = _cache.get(key)
        if encoder is None:
            encoder = HashEncoder(version, perm, device=device)
            # Only the newest encoder stays: a process that used an older model (or
            # another device) releases that network instead of keeping every one.
            _cache.clear()
            _cache[key] = encoder
    return encoder


class HashEncoder:
    """Holds one version's network (eval mode) and its permutation."""

    def __init__(self, version: ModelVersion, permutation: np.ndarray, *, device=None):
        import torch

        from training.preprocessing import Preprocessing
        from training.registry import models_root
        from training.weights import WeightsUnavailable, read_state_dict

        from .network import build_hash_model

        self.version = version
        self.permutation = permutation
        self.batch_size = DEFAULT_BATCH_SIZE
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        config = version.config
        self.pre = Preprocessing.from_dict(config["preprocessing"])
        path = models_root() / version.weights_path
        if not path.is_file():
            raise SimilarityError(f"The weights of {version} are missing ({path}).")
        try:
            model = build_hash_model(config)
            model.load_state_dict(read_state_dict(path))
        except (WeightsUnavailable, RuntimeError, KeyError, ValueError) as exc:
            raise SimilarityError(f"{version} cannot be loaded: {exc}") from exc
        self.model = model.to(self.device).eval()
        self._lock = threading.Lock()

    def _codes(self, tensors: list) -> np.ndarray:
        import torch

        out = np.zeros((len(tensors), CODE_BYTES), dtype=np.uint8)
        with self._lock, torch.no_grad():
            for start in range(0, len(tensors), self.batch_size):
                batch = torch.stack(tensors[start : start + self.batch_size]).to(self.device)
                bits = (self.model.encode(batch) > 0).cpu().numpy()
                out[start : start + len(bits)] = np.packbits(bits[:, self.permutation], axis=1)
        return out

    def encode_images(self, images: Sequence[PILImage.Image]) -> np.ndarray:
        """Decoded images → permuted codes ``uint8 (n, 32)``."""
        from training.preprocessing import to_uint8_tensor

        tensors = [to_uint8_tensor(self.pre.resize_image(img.convert("RGB"))) for img in images]
        return self._codes(tensors)

    def encode_bytes(self, contents: Sequence[bytes]) -> np.ndarray:
        """Encoded image files (uploads, fetched URLs) → permuted codes ``uint8 (n, 32)``,
        decoded the way :meth:`encode_paths` decodes the archive's files (JPEG ``draft``
        at the model's input size, then the same resize), so the very file of an indexed
        keyframe gets its stored code (distance 0). EXIF orientation is applied after
        decoding, as for every query picture. Raises ``SimilarityError`` for a file that
        cannot be decoded."""
        import io

        from PIL import ImageOps

        from training.preprocessing import to_uint8_tensor

        tensors = []
        for content in contents:
            try:
                with self.pre.open(io.BytesIO(content)) as img:
                    upright = ImageOps.exif_transpose(img) or img
                    tensors.append(to_uint8_tensor(self.pre.resize_image(upright)))
            except SimilarityError:
                raise
            except Exception as exc:  # noqa: BLE001 - truncated, not an image …
                raise SimilarityError(f"A query image could not be decoded ({exc}).") from exc
        return self._codes(tensors)

    def encode_paths(self, paths: Sequence[Path | str]) -> tuple[np.ndarray, np.ndarray]:
        """Image files → ``(codes uint8 (n, 32), ok bool (n,))``; an unreadable file gets
        a zero row and ``ok`` False instead of failing the batch."""
        ok = np.zeros(len(paths), dtype=bool)
        tensors = []
        for i, path in enumerate(paths):
            try:
                tensors.append(self.pre.load(path))
                ok[i] = True
            except Exception:  # noqa: BLE001 - truncated, missing, not an image …
                continue
        codes = np.zeros((len(paths), CODE_BYTES), dtype=np.uint8)
        if tensors:
            codes[ok] = self._codes(tensors)
        return codes, ok
