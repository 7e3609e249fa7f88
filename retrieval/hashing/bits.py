"""Bit-level helpers of the 256-bit hash codes: packing, Hamming distance, and the
choice and grouping of the 64 coarse bits (thesis 4.2.3).

ElasticHash filters on a 64-bit code with multi-index hashing (4 subcodes of 16 bits) and
re-ranks on all 256 bits. Which 64 bits, and how they are grouped, matters: MIH works
best when the subcodes are independent of each other, so the thesis

1. computes the correlations between the bit positions of many codes,
2. keeps the 64 bits with the lowest correlation to all the others, and
3. splits them into 4 × 16 with Kernighan–Lin on the bit-correlation graph: KL minimises
   the weight of the edges *between* groups, so strongly correlated bits share a group
   and the groups are as independent of each other as the bits allow.

The result is a permutation of the 256 bit positions, stored with the hashing model.
Every code the encoder emits is already permuted: bits 0–63 are the coarse bits in KL
group order (subcode ``i`` = bits ``16i … 16i+15`` = bytes ``2i, 2i+1``), bits 64–255 the
rest. Index backends therefore never need the model (``retrieval.search.base``).

Torch-free (numpy and networkx only): the web process imports this module.
"""

from __future__ import annotations

import numpy as np

from ..search.base import COARSE_BITS, CODE_BITS, CODE_BYTES, SUBCODE_BITS, SUBCODES

__all__ = [
    "apply_permutation",
    "bit_correlations",
    "check_permutation",
    "hamming",
    "kl_partition",
    "pack_bits",
    "select_coarse_bits",
    "subcode_groups",
    "unpack_bits",
]

# popcount of every byte value: Hamming distance = sum of popcounts of XORed bytes
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """``(n, 256)`` bool/0-1 → ``(n, 32)`` uint8, big-endian bit order within a byte."""
    arr = np.asarray(bits)
    if arr.ndim != 2 or arr.shape[1] != CODE_BITS:
        raise ValueError(f"expected bits of shape (n, {CODE_BITS}), got {arr.shape}")
    return np.packbits(arr.astype(bool), axis=1)


def unpack_bits(codes: np.ndarray) -> np.ndarray:
    """``(n, 32)`` uint8 → ``(n, 256)`` bool (inverse of :func:`pack_bits`)."""
    arr = np.asarray(codes, dtype=np.uint8)
    if arr.ndim != 2 or arr.shape[1] != CODE_BYTES:
        raise ValueError(f"expected codes of shape (n, {CODE_BYTES}), got {arr.shape}")
    return np.unpackbits(arr, axis=1).astype(bool)


def hamming(codes: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Hamming distances between each row of ``codes`` ``(n, B)`` and ``code`` ``(B,)``.

    Refuses codes of different lengths instead of broadcasting or truncating them."""
    codes = np.asarray(codes, dtype=np.uint8)
    code = np.asarray(code, dtype=np.uint8)
    if codes.ndim != 2 or code.ndim != 1 or codes.shape[1] != code.shape[0]:
        raise ValueError(
            f"code lengths differ: codes of shape {codes.shape} vs a code of shape {code.shape}"
        )
    return _POPCOUNT[np.bitwise_xor(codes, code)].sum(axis=1, dtype=np.int64)


def bit_correlations(bits: np.ndarray) -> np.ndarray:
    """Absolute Pearson correlations ``(b, b)`` between bit positions of ``(n, b)`` bits.

    A constant bit has no defined correlation; it counts as fully correlated (1.0) with
    every other bit, because it carries no information and must never be chosen for the
    coarse stage."""
    x = np.asarray(bits, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("bit correlations need at least two codes")
    x = x - x.mean(axis=0)
    std = x.std(axis=0)
    constant = std < 1e-12
    x[:, ~constant] /= std[~constant]
    corr = np.abs(x.T @ x) / x.shape[0]
    corr[constant, :] = 1.0
    corr[:, constant] = 1.0
    np.fill_diagonal(corr, 1.0)
    return np.clip(corr, 0.0, 1.0)


def kl_partition(weights: np.ndarray, groups: int = SUBCODES, seed: int = 0) -> list[list[int]]:
    """Split the nodes of a weighted complete graph (``weights`` ``(m, m)``, symmetric)
    into ``groups`` equal parts with minimal weight between parts: recursive
    Kernighan–Lin bisection (networkx). ``groups`` must be a power of two dividing ``m``.

    Returns the groups as sorted lists of node indices, in a deterministic order (by
    their smallest node)."""
    import networkx as nx
    from networkx.algorithms.community import kernighan_lin_bisection

    w = np.asarray(weights, dtype=np.float64)
    m = w.shape[0]
    if w.shape != (m, m):
        raise ValueError("weights must be a square matrix")
    if groups < 1 or groups & (groups - 1) or m % groups:
        raise ValueError(f"cannot split {m} bits into {groups} equal groups")

    def split(nodes: list[int], parts: int, depth: int) -> list[list[int]]:
        if parts == 1:
            return [sorted(nodes)]
        graph = nx.Graph()
        graph.add_nodes_from(nodes)
        for i, a in enumerate(nodes):
            for b in nodes[i + 1 :]:
                graph.add_edge(a, b, weight=float(w[a, b]))
        half = len(nodes) // 2
        start = (set(nodes[:half]), set(nodes[half:]))
        left, right = kernighan_lin_bisection(
            graph, partition=start, max_iter=50, weight="weight", seed=seed + depth
        )
        return split(sorted(left), parts // 2, depth + 1) + split(
            sorted(right), parts // 2, depth + 1
        )

    return sorted(split(list(range(m)), groups, 0), key=min)


def select_coarse_bits(bits: np.ndarray, seed: int = 0) -> np.ndarray:
    """The bit permutation of a hashing model, from sample codes ``(n, 256)`` (thesis
    4.2.3): the 64 bits with the lowest mean correlation to all other bits, grouped 4 × 16
    by Kernighan–Lin, then the remaining 192 bits in their original order.

    Returns ``int64 (256,)``; ``permuted = bits[:, perm]`` (:func:`apply_permutation`)."""
    arr = np.asarray(bits)
    if arr.ndim != 2 or arr.shape[1] != CODE_BITS:
        raise ValueError(f"expected bits of shape (n, {CODE_BITS}), got {arr.shape}")
    corr = bit_correlations(arr)
    off_diagonal = corr.sum(axis=1) - 1.0
    score = off_diagonal / (CODE_BITS - 1)
    # stable: equal scores keep the lower bit index first, so results are reproducible
    coarse = np.sort(np.argsort(score, kind="stable")[:COARSE_BITS])
    groups = kl_partition(corr[np.ix_(coarse, coarse)], SUBCODES, seed=seed)
    ordered = [int(coarse[i]) for group in groups for i in group]
    rest = [b for b in range(CODE_BITS) if b not in set(ordered)]
    perm = np.array(ordered + rest, dtype=np.int64)
    check_permutation(perm)
    return perm


def check_permutation(perm) -> np.ndarray:
    """Validate a stored permutation (a model's config); ``ValueError`` with the reason."""
    arr = np.asarray(perm)
    if arr.shape != (CODE_BITS,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"a bit permutation must hold {CODE_BITS} integers, not {arr.shape} {arr.dtype}"
        )
    if not np.array_equal(np.sort(arr), np.arange(CODE_BITS)):
        raise ValueError(f"a bit permutation must contain each of 0…{CODE_BITS - 1} once")
    return arr.astype(np.int64)


def apply_permutation(bits: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Reorder bit columns: ``out[:, j] = bits[:, perm[j]]``."""
    arr = np.asarray(bits)
    perm = check_permutation(perm)
    if arr.ndim != 2 or arr.shape[1] != CODE_BITS:
        raise ValueError(f"expected bits of shape (n, {CODE_BITS}), got {arr.shape}")
    return arr[:, perm]


def subcode_groups() -> list[range]:
    """Bit ranges of the 4 subcodes in a permuted code."""
    return [range(i * SUBCODE_BITS, (i + 1) * SUBCODE_BITS) for i in range(SUBCODES)]
