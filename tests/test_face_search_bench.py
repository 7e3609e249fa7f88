"""``manage.py bench face-search`` end to end at tiny sizes (DESIGN.md section 7, issue 7).

The bench needs no database: synthetic embeddings, our ``FaceIndex`` against an exact
``IndexFlatIP`` in the same run."""

from __future__ import annotations

import io
import json

import numpy as np
from django.core.management import call_command

from retrieval.benchmarks.face_search import make_queries, synthetic_faces

REQUIRED = ("n", "recall_at_100", "p50_ms", "p95_ms", "baseline_p50_ms", "speedup")


def bench(*args: str) -> dict:
    out = io.StringIO()
    call_command("bench", "face-search", "--json", "--quiet", *args, stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_bench_face_search_ivf_tiny():
    result = bench("--n", "6000", "--queries", "30", "--exact-max", "1000")
    for key in REQUIRED:
        assert key in result
    assert result["name"] == "face-search" and result["n"] == 6000
    assert result["index"].startswith("IVF") and result["nprobe"] >= 16
    assert result["recall_at_100"] >= 0.9
    assert result["speedup"] == round(result["baseline_p50_ms"] / result["p50_ms"], 2)
    assert result["memory_mb"] < result["baseline_memory_mb"]  # 8-bit codes, not floats
    assert result["build_s"] > 0 and result["queries"] == 30


def test_bench_face_search_exact_below_the_threshold():
    result = bench("--n", "2000", "--queries", "10", "--exact-max", "5000")
    assert result["index"].startswith("exact")
    assert result["recall_at_100"] == 1.0


def test_synthetic_faces_look_like_face_embeddings():
    vectors, labels = synthetic_faces(20_000, per_identity=20, spectrum=0.8, noise=0.1, seed=1)
    assert vectors.shape == (20_000, 512) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert abs((labels < 0).mean() - 0.1) < 0.01
    counts = np.bincount(labels[labels >= 0])
    assert counts.min() >= 1 and counts.max() > 5 * np.median(counts)  # heavy-tailed
    rng = np.random.default_rng(0)
    a, b = rng.choice(20_000, 3000), rng.choice(20_000, 3000)
    other = (labels[a] != labels[b]) | (labels[a] < 0)
    impostor = (vectors[a] * vectors[b]).sum(1)[other]
    assert abs(impostor.mean()) < 0.02 and 0.05 < impostor.std() < 0.12
    same_id = labels[labels >= 0][0]
    same = vectors[labels == same_id]
    pairs = same @ same.T
    assert 0.5 < pairs[np.triu_indices(len(same), 1)].mean() < 0.8
    queries = make_queries(vectors, labels, 50, seed=1)
    best = (queries @ vectors.T).max(1)
    assert (best > 0.8).all() and (best < 0.99).all()
