"""The one interface every hash-code index backend implements (FAISS, Elasticsearch).

Codes are 256-bit hash codes as ``uint8`` arrays of shape ``(n, 32)``, already *permuted*
by the hashing model (``retrieval.hashing.bits``): bytes 0–7 are the 64 coarse bits and
subcode ``i`` (of 4) is bytes ``2i, 2i+1``. Backends therefore never see a model, only
codes and image ids, and search = coarse stage on the 64 bits, shortlist, re-ranking by
the 256-bit Hamming distance (thesis 4.2.3).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import numpy as np

from annotation.similarity import SimilarityError

CODE_BITS = 256
CODE_BYTES = CODE_BITS // 8
COARSE_BITS = 64
COARSE_BYTES = COARSE_BITS // 8
SUBCODES = 4
SUBCODE_BITS = COARSE_BITS // SUBCODES


class IndexUnavailable(SimilarityError):
    """The index backend cannot be reached or read (e.g. Elasticsearch is down)."""


class CodeLengthMismatch(SimilarityError):
    """Codes of another length than the index holds; refused, never truncated."""


def check_codes(codes: np.ndarray, *, single: bool = False) -> np.ndarray:
    """Validate and normalise codes to C-contiguous ``uint8`` ``(n, 32)`` (or ``(32,)``)."""
    arr = np.ascontiguousarray(np.asarray(codes, dtype=np.uint8))
    if single:
        if arr.shape != (CODE_BYTES,):
            raise CodeLengthMismatch(
                f"A query code must have {CODE_BITS} bits ({CODE_BYTES} bytes); "
                f"this one has shape {arr.shape}."
            )
        return arr
    if arr.ndim != 2 or arr.shape[1] != CODE_BYTES:
        raise CodeLengthMismatch(
            f"Hash codes must have {CODE_BITS} bits ({CODE_BYTES} bytes each); "
            f"got an array of shape {arr.shape}."
        )
    return arr


@runtime_checkable
class CodeIndex(Protocol):
    """A persistent index of ``(image id, 256-bit code)`` pairs."""

    def add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Add (or replace) codes; ``ids`` int64 ``(n,)``, ``codes`` uint8 ``(n, 32)``."""

    def remove(self, ids: Iterable[int]) -> int:
        """Remove these ids; returns how many were present."""

    def search(self, code: np.ndarray, k: int) -> list[tuple[int, int]]:
        """The ``k`` nearest ids to one code as ``(id, 256-bit Hamming distance)``,
        nearest first (ties by id)."""

    def count(self) -> int:
        """How many codes the index holds."""

    def persist(self) -> None:
        """Write the index so a new process finds it (no-op for a server backend)."""

    def rebuild(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Drop everything and index these ``(ids, codes)`` batches (from stored codes)."""
