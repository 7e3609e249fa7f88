"""Retrieval quality of hash codes: mAP@k by Hamming ranking (numpy only).

For each query the database is ranked by 256-bit Hamming distance (ties broken by
database order, i.e. deterministically and without looking at the labels), and

    AP@k = (1 / R_k) · Σ_{i ≤ k} precision(i) · rel(i),

where ``R_k`` is the number of relevant items (same class) among the top ``k``; a query
with none scores 0. This is the mAP@k common in the deep hashing literature (and the
thesis' mAP@100 of ElasticHash); with ``k`` = the whole database it equals scikit-learn's
``average_precision_score`` of that ranking (tests check it). The chance level — what a
random ranking scores in expectation — is the mean share of relevant items per query.
"""

from __future__ import annotations

import numpy as np

from .bits import _POPCOUNT


def hamming_matrix(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """``(q, n)`` Hamming distances between packed codes of equal length."""
    queries = np.asarray(queries, dtype=np.uint8)
    database = np.asarray(database, dtype=np.uint8)
    if queries.shape[1:] != database.shape[1:] or queries.ndim != 2:
        raise ValueError(
            f"code lengths differ: {queries.shape} queries vs a {database.shape} database"
        )
    out = np.empty((len(queries), len(database)), dtype=np.int32)
    for start in range(0, len(queries), 256):
        block = queries[start : start + 256]
        xor = np.bitwise_xor(block[:, None, :], database[None, :, :])
        out[start : start + 256] = _POPCOUNT[xor].sum(axis=2, dtype=np.int32)
    return out


def map_at_k(
    query_codes: np.ndarray,
    query_labels: np.ndarray,
    db_codes: np.ndarray,
    db_labels: np.ndarray,
    k: int = 100,
    *,
    exclude: np.ndarray | None = None,
) -> tuple[float, float]:
    """``(mAP@k, chance)``. ``exclude[i]`` is the database position of query ``i`` itself
    (−1 for none): a query never retrieves itself."""
    query_labels = np.asarray(query_labels)
    db_labels = np.asarray(db_labels)
    if len(query_codes) == 0 or len(db_codes) == 0:
        raise ValueError("mAP needs queries and a database")
    dist = hamming_matrix(query_codes, db_codes).astype(np.int64)
    n = len(db_codes)
    # stable tie-break by database position: distance · n + position is unique per row
    key = dist * n + np.arange(n)[None, :]
    if exclude is not None:
        rows = np.flatnonzero(np.asarray(exclude) >= 0)
        key[rows, np.asarray(exclude)[rows]] = np.iinfo(np.int64).max
    available = n - (0 if exclude is None else 1)
    kk = max(1, min(k, available))
    top = np.argpartition(key, kk - 1, axis=1)[:, :kk]
    order = np.take_along_axis(key, top, axis=1).argsort(axis=1)
    top = np.take_along_axis(top, order, axis=1)
    rel = (db_labels[top] == query_labels[:, None]).astype(np.float64)
    hits = rel.cumsum(axis=1)
    precision = hits / np.arange(1, kk + 1)[None, :]
    found = rel.sum(axis=1)
    ap = np.where(found > 0, (precision * rel).sum(axis=1) / np.maximum(found, 1), 0.0)
    relevant = (db_labels[None, :] == query_labels[:, None]).sum(axis=1).astype(np.float64)
    if exclude is not None:
        relevant -= (np.asarray(exclude) >= 0).astype(np.float64)
    chance = float(np.mean(relevant / max(available, 1)))
    return float(ap.mean()), chance
