"""Multi-index hashing on the 64 coarse bits, and the Hamming helpers of the two stages.

Thesis 4.2.3 (ElasticHash): the 64 coarse bits are split into ``m = 4`` subcodes of 16
bits; a code within Hamming distance ``d`` of the query on 64 bits has, by pigeonhole,
at least one subcode within ``floor(d / m)`` of the query's subcode. Probing every
subcode table up to radius ``r`` therefore finds **every** code within ``m·(r+1) − 1 =
4r + 3`` on 64 bits (Norouzi, Punjani & Fleet, "Fast search in Hamming space with
multi-index hashing", CVPR 2012). The thesis (and DESIGN.md 5) uses ``r = 2``
(137 neighbour keys per subcode, radius 11); :func:`coarse_search` probes rings 0–2,
then 3 (and further if asked), and stops once the shortlist is known exactly, which is
MIH's k-nearest-neighbour search. Radius 3 because on archive-like data the true
neighbours lie ~14 of 64 coarse bits away, beyond radius 11 (docs/similarity-search.md).

The tables are compressed sparse rows, not hash maps: per subcode, the positions of the
codes sorted by subcode value, ``offsets[65537]`` into them, and a copy of the 64-bit
codes in the same order, so checking the candidates of one key reads one contiguous
slice (no random access into the code array until the short re-ranking). Everything is
vectorised numpy (``np.bitwise_count``); no per-candidate Python.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import COARSE_BYTES, SUBCODE_BITS, SUBCODES

KEYS = 1 << SUBCODE_BITS
#: Coarse distances are in 0..64; a histogram over them picks shortlist thresholds.
COARSE_RANGE = SUBCODES * SUBCODE_BITS + 1


def guaranteed_radius(r: int, subcodes: int = SUBCODES) -> int:
    """The 64-bit radius within which probing ``r`` per subcode misses nothing."""
    return subcodes * (r + 1) - 1


@lru_cache(maxsize=SUBCODE_BITS + 1)
def ring_masks(r: int) -> np.ndarray:
    """All 16-bit masks with exactly ``r`` bits set (C(16, r) of them), as int64."""
    masks = [sum(1 << b for b in bits) for bits in itertools.combinations(range(SUBCODE_BITS), r)]
    return np.asarray(masks, dtype=np.int64)


def coarse64(codes: np.ndarray) -> np.ndarray:
    """The 64 coarse bits (bytes 0–7) of ``(n, 32)`` codes as one ``uint64`` per code."""
    return np.ascontiguousarray(codes[:, :COARSE_BYTES]).view(np.uint64).reshape(-1)


def subcode_keys(codes: np.ndarray) -> np.ndarray:
    """``(n, 4)`` int64: subcode ``i`` = bytes ``2i, 2i+1`` read big-endian (base.py)."""
    head = codes[:, :COARSE_BYTES].astype(np.int64)
    return (head[:, 0::2] << 8) | head[:, 1::2]


def hamming64(packed: np.ndarray, query64: np.uint64) -> np.ndarray:
    """Distances (uint8) of ``uint64`` coarse codes to one coarse query code."""
    return np.bitwise_count(packed ^ query64)


def hamming256(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """256-bit Hamming distances (int64) of ``(n, 32)`` codes to one ``(32,)`` code."""
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64)
    words = np.ascontiguousarray(codes).view(np.uint64)
    q = np.ascontiguousarray(query).view(np.uint64)
    return np.bitwise_count(words ^ q).sum(axis=1, dtype=np.int64)


def threshold_for(distances: np.ndarray, size: int) -> int:
    """The smallest distance ``t`` with at least ``size`` of ``distances`` ≤ ``t``
    (64 when there are fewer): a histogram, cheaper than a partial sort."""
    hist = np.cumsum(np.bincount(distances, minlength=COARSE_RANGE))
    return int(min(np.searchsorted(hist, size), COARSE_RANGE - 1))


@dataclass
class MihTables:
    """The four subcode tables over a sealed set of codes (positions ``0 .. n-1``)."""

    positions: np.ndarray  # (4, n) int32: positions sorted by subcode value, per table
    offsets: np.ndarray  # (4, 65537) int64: table t, key v → positions[t, off[v]:off[v+1]]
    sorted64: np.ndarray  # (4, n) uint64: coarse codes in the order of ``positions``

    FILES = ("positions", "offsets", "sorted64")

    @classmethod
    def build(cls, codes: np.ndarray) -> MihTables:
        """Tables for ``(n, 32)`` codes; a stable sort keeps positions ascending per key."""
        n = len(codes)
        if n >= np.iinfo(np.int32).max:
            raise ValueError("MIH tables hold at most 2**31 - 1 codes.")
        keys = subcode_keys(codes)
        packed = coarse64(codes)
        positions = np.empty((SUBCODES, n), dtype=np.int32)
        offsets = np.zeros((SUBCODES, KEYS + 1), dtype=np.int64)
        sorted64 = np.empty((SUBCODES, n), dtype=np.uint64)
        for t in range(SUBCODES):
            key = keys[:, t].astype(np.uint16)
            order = np.argsort(key, kind="stable")
            positions[t] = order
            np.cumsum(np.bincount(key, minlength=KEYS), out=offsets[t, 1:])
            np.take(packed, order, out=sorted64[t])
        return cls(positions, offsets, sorted64)

    @property
    def size(self) -> int:
        return int(self.positions.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.positions.nbytes + self.offsets.nbytes + self.sorted64.nbytes)

    def save(self, folder: Path) -> None:
        for name in self.FILES:
            np.save(folder / f"{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, folder: Path, *, mmap: bool = True) -> MihTables:
        mode = "r" if mmap else None
        arrays = [np.load(folder / f"{name}.npy", mmap_mode=mode) for name in cls.FILES]
        tables = cls(*arrays)
        n = tables.size
        if (
            tables.positions.shape != (SUBCODES, n)
            or tables.offsets.shape != (SUBCODES, KEYS + 1)
            or tables.sorted64.shape != (SUBCODES, n)
            or int(tables.offsets[0, -1]) != n
        ):
            raise ValueError(f"inconsistent MIH tables in {folder}")
        return tables

    def slices(self, code: np.ndarray, rings: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Where the candidates of ``rings`` lie in the flattened ``(4, n)`` arrays: one
        ``(start, length)`` per table and probed key (key = subcode XOR a ring mask)."""
        keys = subcode_keys(code[None, :])[0]
        masks = np.concatenate([ring_masks(r) for r in rings])
        probe = keys[:, None] ^ masks[None, :]  # (4, probes)
        starts = np.take_along_axis(self.offsets, probe, axis=1)
        lengths = (np.take_along_axis(self.offsets, probe + 1, axis=1) - starts).ravel()
        # Table t's rows start at t·n in the flattened (4, n) arrays.
        starts = (starts + np.arange(SUBCODES, dtype=np.int64)[:, None] * self.size).ravel()
        keep = lengths > 0
        return starts[keep], lengths[keep]

    def candidates(self, code: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """Every candidate up to ``radius`` per subcode: ``(positions, coarse distances)``,
        with repeats (a code near in two subcodes is found twice). For tests and tools;
        :func:`coarse_search` is the fast path."""
        starts, lengths = self.slices(code, range(radius + 1))
        flat, _, dist = _scan(self, starts, lengths, coarse64(code[None, :])[0])
        return self.positions.reshape(-1)[flat], dist.copy()


class _Buffers(threading.local):
    """Per-thread scratch arrays for candidate scans: fresh multi-megabyte temporaries on
    every query cost page faults that measured as much as the scan itself."""

    def __init__(self) -> None:
        self.flat = np.empty(0, dtype=np.int64)
        self.words = np.empty(0, dtype=np.uint64)
        self.dist = np.empty(0, dtype=np.uint8)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(self.flat) < n:
            cap = max(n, len(self.flat) * 3 // 2, 1 << 16)
            self.flat = np.empty(cap, dtype=np.int64)
            self.words = np.empty(cap, dtype=np.uint64)
            self.dist = np.empty(cap, dtype=np.uint8)
        return self.flat[:n], self.words[:n], self.dist[:n]


_buffers = _Buffers()


def _scan(tables: MihTables, starts: np.ndarray, lengths: np.ndarray, query64: np.uint64):
    """Flat indices, gathered coarse codes and their distances for these slices (views
    into this thread's buffers, valid until its next scan)."""
    total = int(lengths.sum())
    flat, words, dist = _buffers.get(total)
    if total == 0:
        return flat, words, dist
    # A running index that jumps at every slice start: cumsum of 1s with jumps.
    flat.fill(1)
    jumps = np.empty(len(starts), dtype=np.int64)
    jumps[0] = starts[0]
    jumps[1:] = starts[1:] - (starts[:-1] + lengths[:-1]) + 1
    flat[np.cumsum(lengths) - lengths] = jumps
    np.cumsum(flat, out=flat)
    np.take(tables.sorted64.reshape(-1), flat, out=words, mode="clip")  # in range: no checks
    np.bitwise_xor(words, query64, out=words)
    np.bitwise_count(words, out=dist)
    return flat, words, dist


def _scan_part(tables: MihTables, starts, lengths, query64, shortlist: int):
    """One thread's share: scan, then keep about its ``shortlist`` nearest — a superset:
    the cut comes from a histogram of every ``SAMPLE``-th distance, with a margin (an
    exact histogram of all of them cost as much as the scan). Keeping a superset of each
    part's nearest loses nothing: the final cut over all parts is exact. Returns small
    copies, so the buffers can be reused at once."""
    flat, _, dist = _scan(tables, starts, lengths, query64)
    if len(dist) <= shortlist:
        keep = np.arange(len(dist))
    else:
        estimate = np.cumsum(np.bincount(dist[::SAMPLE], minlength=COARSE_RANGE)) * SAMPLE
        cut = int(min(np.searchsorted(estimate, shortlist * MARGIN), COARSE_RANGE - 1))
        keep = np.flatnonzero(dist <= cut)
        if len(keep) < shortlist:  # the sample misled: fall back to the exact count
            cut = threshold_for(dist, shortlist)
            keep = np.flatnonzero(dist <= cut)
    return tables.positions.reshape(-1)[flat[keep]], dist[keep]


#: Every SAMPLE-th coarse distance estimates a part's cut; MARGIN over-keeps so that the
#: estimate rarely falls short (then an exact count is made).
SAMPLE = 8
MARGIN = 1.3


_pools: dict[int, ThreadPoolExecutor] = {}
_pool_lock = threading.Lock()


def _executor(threads: int) -> ThreadPoolExecutor:
    """One shared pool per thread count (created on first use, never per query)."""
    with _pool_lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="viva-mih")
        return _pools[threads]


def _stages(max_radius: int) -> list[list[int]]:
    """Rings probed together: 0–2 in one pass (137 keys per subcode, a fifth of ring 3's
    work: the early stop it could save is not worth a pass of its own), then one by one."""
    first = list(range(min(2, max_radius) + 1))
    return [first] + [[r] for r in range(len(first), max_radius + 1)]


def coarse_search(
    tables: MihTables,
    code: np.ndarray,
    shortlist: int,
    max_radius: int,
    *,
    enough: int | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, int]:
    """MIH k-nearest search on 64 bits: ``(positions, coarse distances, last radius)`` of
    about ``shortlist`` candidates (the nearest found; all ties at the cut are kept).

    Rings ``r = 0, 1, …`` are probed until ``enough`` (default: ``shortlist``) distinct
    codes lie within the guaranteed radius ``4r + 3`` — then the ``enough`` nearest on 64
    bits are known exactly (Norouzi et al.'s kNN search) — or ``r = max_radius``. So a
    query among near-duplicates stops after a ring or two, and a query whose neighbours
    are unusually far on the coarse bits probes further. Positions can repeat (a code
    found through two subcodes). Large scans are split over ``threads`` threads (numpy
    releases the GIL in its array loops).
    """
    enough = shortlist if enough is None else enough
    query64 = coarse64(code[None, :])[0]
    found_pos: list[np.ndarray] = []
    found_dist: list[np.ndarray] = []
    r = 0
    for rings in _stages(max_radius):
        r = rings[-1]
        starts, lengths = tables.slices(code, rings)
        parts = _split(starts, lengths, threads)
        if len(parts) > 1:
            futures = [
                _executor(threads).submit(_scan_part, tables, s, n, query64, shortlist)
                for s, n in parts
            ]
            results = [f.result() for f in futures]
        else:
            results = [_scan_part(tables, starts, lengths, query64, shortlist)]
        for pos, dist in results:
            found_pos.append(pos)
            found_dist.append(dist)
        if r == max_radius:
            break
        # Each part kept everything up to its cut, so the kept codes within the
        # guaranteed radius are all of them there, or already ``shortlist`` many.
        radius = guaranteed_radius(r)
        near = [p[d <= radius] for p, d in zip(found_pos, found_dist, strict=True)]
        # Counting with repeats bounds the distinct count from above: deduplicate only
        # when that bound is reached.
        if sum(len(p) for p in near) >= enough:
            if np.unique(np.concatenate(near)).size >= enough:
                break
    pos, dist = np.concatenate(found_pos), np.concatenate(found_dist)
    cut = dist <= threshold_for(dist, shortlist)
    return pos[cut], dist[cut], r


#: Below this many candidates a scan stays in the calling thread (handing work to a
#: thread costs ~0.1 ms).
PARALLEL_MIN = 100_000


def _split(starts: np.ndarray, lengths: np.ndarray, threads: int) -> list[tuple]:
    """Slices cut into ``threads`` runs of about equal candidate counts."""
    total = int(lengths.sum())
    if threads <= 1 or total < PARALLEL_MIN:
        return [(starts, lengths)]
    bounds = np.searchsorted(np.cumsum(lengths), np.arange(1, threads) * total / threads)
    edges = [0, *bounds.tolist(), len(starts)]
    return [(starts[a:b], lengths[a:b]) for a, b in itertools.pairwise(edges) if b > a]
