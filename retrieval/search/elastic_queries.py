"""The request bodies of the ElasticHash backend, as plain data (thesis section 4.2.3).

Everything the Elasticsearch/OpenSearch backend sends is built here by pure functions, so the
exact structures of Listings 4.1–4.4 can be tested without a cluster, and the backend
(:mod:`retrieval.search.elastic`) only moves them over the wire.

Field layout (codes are already permuted, see :mod:`retrieval.search.base`):

* ``f_0..f_3`` (keyword): the four 16-bit subcodes of the 64 coarse bits (bytes ``2i, 2i+1``,
  big-endian) as the decimal string of the unsigned integer, as ElasticHash stores them. The
  inverted index over these terms is the multi-index hashing (MIH) stage.
* ``r_0..r_3`` (long): the 256-bit code as four 64-bit words, big-endian bit order, stored as
  signed two's-complement longs (ElasticHash's ``binstr2int``). ``r_0`` holds the same 64 bits
  as ``f_0..f_3``. The stored painless script ``hd64`` re-ranks on them.
* ``image_id`` (long): the archive image id. Listing 4.1 has an ``image`` text field (a path);
  we keep ids only (paths live in the database) and need a sortable field so that equal
  distances are ordered by id, as every other backend orders them.

The neighbour index ``nbs-d2`` holds one document per 16-bit value (id = the value) whose
``nbs`` field lists the 137 values within Hamming distance 2 (1 + 16 + 120), itself included.
A query's ``terms`` lookup on ``f_i`` fetches that list inside the cluster (Listing 4.4), so a
code is a candidate when at least one of its four subcodes is within distance 2 of the query's
— which by the MIH proposition (eq. 4.5) includes every code within 64-bit distance 11.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import combinations
from typing import Any

import numpy as np

from .base import CODE_BITS, CODE_BYTES, SUBCODE_BITS, SUBCODES, check_codes

SCRIPT_ID = "hd64"
"""Name of the stored painless script of Listing 4.3."""

SCRIPT_SOURCE = "64-Long.bitCount(params.subcode^doc[params.field].value)"
"""Listing 4.3 verbatim: 64 minus the Hamming distance of one 64-bit word."""

NEIGHBOUR_FIELD = "nbs"
NEIGHBOUR_RADIUS = 2
SUBCODE_VALUES = 1 << SUBCODE_BITS  # 65,536 documents in the neighbour index
WORDS = CODE_BITS // 64  # r_0..r_3
F_FIELDS = tuple(f"f_{i}" for i in range(SUBCODES))
R_FIELDS = tuple(f"r_{i}" for i in range(WORDS))
ID_FIELD = "image_id"
KNN_FIELD = "code_bits"
"""``dense_vector`` (``element_type: bit``) field of the optional Elasticsearch 8.15+ kNN mode."""


# --------------------------------------------------------------------------- code layout


def subcode_masks(bits: int = SUBCODE_BITS, radius: int = NEIGHBOUR_RADIUS) -> np.ndarray:
    """XOR masks of all flips of at most ``radius`` of ``bits`` bits (the zero mask first).

    For 16 bits and radius 2 these are 1 + 16 + 120 = 137 masks, the thesis' neighbour count.
    """
    masks = [0]
    for r in range(1, radius + 1):
        for positions in combinations(range(bits), r):
            masks.append(sum(1 << p for p in positions))
    return np.asarray(masks, dtype=np.int64)


_MASKS = subcode_masks()


def neighbours(subcode: int) -> list[int]:
    """The 16-bit values within Hamming distance 2 of ``subcode`` (itself first)."""
    if not 0 <= int(subcode) < SUBCODE_VALUES:
        raise ValueError(f"A subcode is a 16-bit value (0…{SUBCODE_VALUES - 1}), not {subcode}.")
    return (int(subcode) ^ _MASKS).tolist()


def split_codes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 32)`` uint8 codes → subcodes ``(n, 4)`` uint16 and words ``(n, 4)`` int64.

    Big-endian throughout: ``np.packbits`` put bit 0 of the code in the high bit of byte 0, and
    ElasticHash reads its binary strings most significant bit first.
    """
    arr = check_codes(codes)
    subcodes = arr[:, : 2 * SUBCODES].view(">u2").astype(np.uint16)
    words = arr.view(">i8").astype(np.int64)
    return subcodes, words


def join_words(words: np.ndarray) -> np.ndarray:
    """Inverse of the word split: ``(n, 4)`` int64 → ``(n, 32)`` uint8 codes."""
    arr = np.ascontiguousarray(np.asarray(words, dtype=np.int64).astype(">i8"))
    return arr.view(np.uint8).reshape(len(arr), CODE_BYTES)


def word_distances(query_words: np.ndarray, words: np.ndarray) -> np.ndarray:
    """256-bit Hamming distances between one query's 4 words and ``(n, 4)`` words."""
    xor = np.bitwise_xor(np.asarray(words, dtype=np.int64), np.asarray(query_words, np.int64))
    return np.bitwise_count(xor.view(np.uint64)).sum(axis=1, dtype=np.int64)


# --------------------------------------------------------------------------- index bodies


def codes_index_body(*, knn: bool = False, shards: int | None = None) -> dict[str, Any]:
    """``PUT /<index>`` body: the mapping of Listing 4.1 (plus ``image_id``).

    ``dynamic: strict`` so a document of another layout (e.g. a code of another length written
    by a different tool) is refused by the cluster instead of silently widening the mapping.
    """
    properties: dict[str, Any] = {ID_FIELD: {"type": "long"}}
    properties.update({name: {"type": "keyword"} for name in F_FIELDS})
    properties.update({name: {"type": "long"} for name in R_FIELDS})
    if knn:
        properties[KNN_FIELD] = {
            "type": "dense_vector",
            "element_type": "bit",
            "dims": CODE_BITS,
            "index": True,
            "similarity": "l2_norm",
        }
    body: dict[str, Any] = {"mappings": {"dynamic": "strict", "properties": properties}}
    if shards:
        body["settings"] = {"number_of_shards": int(shards)}
    return body


def neighbours_index_body() -> dict[str, Any]:
    """``PUT /nbs-d2`` body.

    ``nbs`` is a keyword as in ElasticHash, but neither indexed nor given doc values: the terms
    lookup reads it from ``_source`` only, and not indexing 65,536 × 137 terms makes building
    the lookup table an order of magnitude faster and smaller.
    """
    field = {"type": "keyword", "index": False, "doc_values": False}
    return {"mappings": {"properties": {NEIGHBOUR_FIELD: field}}}


def neighbour_actions(index: str, start: int = 0, stop: int = SUBCODE_VALUES) -> Iterator[dict]:
    """Bulk actions of Listing 4.2: one document per 16-bit value, ``_id`` = the value."""
    for value in range(start, stop):
        yield {
            "_op_type": "index",
            "_index": index,
            "_id": str(value),
            "_source": {NEIGHBOUR_FIELD: (value ^ _MASKS).tolist()},
        }


def stored_script_body() -> dict[str, Any]:
    """``POST _scripts/hd64`` body (Listing 4.3)."""
    return {"script": {"lang": "painless", "source": SCRIPT_SOURCE}}


def code_documents(ids: np.ndarray, codes: np.ndarray, *, knn: bool = False) -> list[dict]:
    """One ``_source`` per code: ``image_id``, ``f_0..f_3`` as strings, ``r_0..r_3`` as longs."""
    subcodes, words = split_codes(codes)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(ids) != len(words):
        raise ValueError(f"{len(ids)} ids for {len(words)} codes.")
    docs = []
    for row, image_id in enumerate(ids.tolist()):
        doc: dict[str, Any] = {ID_FIELD: image_id}
        doc.update(zip(F_FIELDS, map(str, subcodes[row].tolist()), strict=True))
        doc.update(zip(R_FIELDS, words[row].tolist(), strict=True))
        if knn:
            doc[KNN_FIELD] = bytes(np.asarray(codes[row], dtype=np.uint8)).hex()
        docs.append(doc)
    return docs


def index_actions(
    index: str, ids: np.ndarray, codes: np.ndarray, *, knn: bool = False
) -> Iterator[dict]:
    """Bulk ``index`` actions; ``_id`` is the image id, so adding an id again replaces it."""
    for doc in code_documents(ids, codes, knn=knn):
        yield {"_op_type": "index", "_index": index, "_id": str(doc[ID_FIELD]), "_source": doc}


def delete_actions(index: str, ids: Iterable[int]) -> Iterator[dict]:
    """Bulk ``delete`` actions for these image ids."""
    for image_id in ids:
        yield {"_op_type": "delete", "_index": index, "_id": str(int(image_id))}


# --------------------------------------------------------------------------- queries


def coarse_filter(code: np.ndarray, neighbours_index: str) -> dict[str, Any]:
    """The MIH stage of Listing 4.4: ``constant_score`` (boost 0) over a ``bool`` filter with
    one ``terms`` lookup per subcode into the neighbour index, at least one must match."""
    subcodes, _ = split_codes(check_codes(code, single=True)[None, :])
    should = [
        {"terms": {field: {"id": str(value), "index": neighbours_index, "path": NEIGHBOUR_FIELD}}}
        for field, value in zip(F_FIELDS, subcodes[0].tolist(), strict=True)
    ]
    return {
        "constant_score": {
            "boost": 0.0,
            "filter": {"bool": {"minimum_should_match": 1, "should": should}},
        }
    }


def rerank_functions(code: np.ndarray) -> list[dict[str, Any]]:
    """The four ``script_score`` functions of Listing 4.4, one per 64-bit word."""
    _, words = split_codes(check_codes(code, single=True)[None, :])
    return [
        {
            "script_score": {
                "script": {"id": SCRIPT_ID, "params": {"field": field, "subcode": value}}
            },
            "weight": 1,
        }
        for field, value in zip(R_FIELDS, words[0].tolist(), strict=True)
    ]


def search_body(
    code: np.ndarray, k: int, neighbours_index: str, *, exhaustive: bool = False
) -> dict[str, Any]:
    """The two-stage query of Listing 4.4, asking for the ``k`` best.

    Score = 0 (the constant-score filter, ``boost_mode: sum``) + Σ (64 − popcount(q_i ^ r_i))
    = 256 − Hamming distance. ``sort`` adds the id as tie-breaker (ElasticHash leaves ties in
    index order); ``exhaustive`` swaps the MIH filter for ``match_all`` (small indexes only).
    """
    query = {"match_all": {}} if exhaustive else coarse_filter(code, neighbours_index)
    return {
        "size": int(k),
        "_source": False,
        "track_total_hits": False,
        "track_scores": True,
        "sort": [{"_score": {"order": "desc"}}, {ID_FIELD: {"order": "asc"}}],
        "query": {
            "function_score": {
                "boost_mode": "sum",
                "score_mode": "sum",
                "functions": rerank_functions(code),
                "query": query,
            }
        },
    }


def candidates_body(
    code: np.ndarray,
    neighbours_index: str,
    page_size: int,
    *,
    search_after: list | None = None,
    exhaustive: bool = False,
) -> dict[str, Any]:
    """One page of the coarse stage only, returning ``r_0..r_3`` for re-ranking in Python.

    For clusters that cannot run the stored script (osmem-server, locked-down scripting):
    the MIH filter still runs in the cluster via the terms lookup, pages are walked in
    ``image_id`` order with ``search_after``.
    """
    body: dict[str, Any] = {
        "size": int(page_size),
        "_source": [ID_FIELD, *R_FIELDS],
        "track_total_hits": False,
        "sort": [{ID_FIELD: {"order": "asc"}}],
        "query": {"match_all": {}} if exhaustive else coarse_filter(code, neighbours_index),
    }
    if search_after is not None:
        body["search_after"] = list(search_after)
    return body


def knn_body(code: np.ndarray, k: int, num_candidates: int) -> dict[str, Any]:
    """Elasticsearch 8.15+ native kNN on the ``bit`` vector (approximate, HNSW).

    The score of a bit vector under ``l2_norm`` is ``(256 − hamming) / 256``.
    """
    arr = check_codes(code, single=True)
    return {
        "size": int(k),
        "_source": False,
        "knn": {
            "field": KNN_FIELD,
            "query_vector": bytes(arr).hex(),
            "k": int(k),
            "num_candidates": int(max(num_candidates, k)),
        },
    }


def score_to_distance(score: float) -> int:
    """Listing 4.4's score (256 − Hamming distance) back to the distance."""
    return CODE_BITS - int(round(float(score)))


def knn_score_to_distance(score: float) -> int:
    """A bit-vector kNN score ``(256 − d) / 256`` back to the distance ``d``."""
    return CODE_BITS - int(round(float(score) * CODE_BITS))
