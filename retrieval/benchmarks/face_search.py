"""``bench face-search``: 512-d face embeddings, k = 100, our index vs exact ``IndexFlatIP``.

Measures :class:`retrieval.face_search.index.FaceIndex` — the index behind the person
similarity search, built by its own :meth:`~FaceIndex.rebuild` — against an exhaustive
``IndexFlatIP`` over the same vectors, in the same run and with the same number of threads
(2 by default, DESIGN.md 7). Latencies are per single query (how the page searches).

Synthetic faces resemble FaceNet embeddings of an archive: identities are directions on
the unit sphere drawn with a decaying variance spectrum (``--spectrum``: real embeddings
use far fewer than 512 effective dimensions, so look-alikes exist; the default gives
≈ 75 effective dimensions and different-person cosines of about 0 ± 0.08, as FaceNet's
impostor pairs); the number of faces per identity is heavy-tailed
(a few anchors appear thousands of times, most people a handful of times); every face is
its identity plus noise (cosine ≈ 0.8 to its identity, so two faces of one person have
cosine ≈ 0.65, as for real same-person pairs); a share ``--noise`` of faces are
unidentifiable singletons (false detections, profiles). Queries are database faces
perturbed once more (another photo of the same moment: cosine ≈ 0.9 to the original).
Recall@100 is the share of the exact top-100 that our top-100 returns.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NAME = "face-search"
DIM = 512
K = 100


def log(msg: str) -> None:
    sys.stderr.write(f"[bench face-search] {msg}\n")
    sys.stderr.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=1_000_000, help="faces in the index")
    parser.add_argument("--queries", type=int, default=200, help="timed single queries")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--faces-per-identity", type=float, default=20.0, help="mean")
    parser.add_argument(
        "--spectrum",
        type=float,
        default=0.8,
        help="identity variance ∝ (i+1)^-a over 512 axes (0 = isotropic; 0.8 ≈ 75 dims)",
    )
    parser.add_argument("--noise", type=float, default=0.1, help="share of singletons")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--exact-max",
        type=int,
        default=None,
        help="faces up to which the index is exact (default: VIVA_FACE_INDEX_EXACT_MAX)",
    )
    parser.add_argument("--nprobe", type=int, default=None, help="IVF cells searched")
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default ≈ 2·√N)")
    parser.add_argument(
        "--encoding", default=None, help="IVF vector encoding: SQ8 (default), Flat, SQfp16 …"
    )
    parser.add_argument("--quiet", action="store_true")


def _unit(rows: np.ndarray) -> np.ndarray:
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def _noise_scale(cosine: float) -> float:
    """σ of isotropic noise that leaves a unit vector at ``cosine`` to where it started."""
    return float(np.sqrt((1 / cosine**2 - 1) / DIM))


def synthetic_faces(
    n: int, *, per_identity: float, spectrum: float, noise: float, seed: int, chunk: int = 100_000
) -> tuple[np.ndarray, np.ndarray]:
    """(vectors float32 (n, 512) unit rows, identity per row, -1 for singletons)."""
    rng = np.random.default_rng(seed)
    n_noise = int(n * noise)
    n_real = n - n_noise
    n_ids = max(1, int(n_real / per_identity))
    # Heavy-tailed faces per identity (log-normal), at least one each, summing to n_real.
    weights = rng.lognormal(0.0, 1.2, n_ids)
    counts = np.maximum(1, np.floor(weights / weights.sum() * (n_real - n_ids)).astype(int) + 1)
    counts[np.argmax(counts)] += n_real - counts.sum()
    # Identities: Gaussian with a decaying variance spectrum in a random rotation, so that
    # (as in real embeddings) people are not all orthogonal: look-alikes exist.
    scale = (np.arange(DIM) + 1.0) ** (-spectrum / 2)
    rotation, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    identities = _unit(
        ((rng.standard_normal((n_ids, DIM)) * scale) @ rotation.T).astype(np.float32)
    )
    labels = np.concatenate([np.repeat(np.arange(n_ids), counts), np.full(n_noise, -1)])
    rng.shuffle(labels)
    vectors = np.empty((n, DIM), dtype=np.float32)
    sigma = _noise_scale(0.8)
    for start in range(0, n, chunk):
        part = labels[start : start + chunk]
        block = rng.standard_normal((part.size, DIM), dtype=np.float32)
        real = part >= 0
        block[real] = identities[part[real]] + sigma * block[real]
        vectors[start : start + part.size] = _unit(block)
    return vectors, labels


def make_queries(vectors: np.ndarray, labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Perturbed database faces of identified people (cos ≈ 0.9 to the originals)."""
    rng = np.random.default_rng(seed + 1)
    candidates = np.flatnonzero(labels >= 0)
    picks = rng.choice(candidates, size=min(count, candidates.size), replace=False)
    base = vectors[picks]
    noisy = base + _noise_scale(0.9) * rng.standard_normal(base.shape).astype(np.float32)
    return _unit(noisy)


def _timed_single(search, queries: np.ndarray) -> tuple[list[float], list[float], list]:
    """Wall and CPU seconds (all threads of this process) per single query, and answers.

    CPU time is reported beside wall time because this machine is shared: when other
    processes compete for the cores, wall time grows and CPU time does not."""
    times, cpu, answers = [], [], []
    for q in queries:
        c0, t0 = time.process_time(), time.perf_counter()
        ids = search(q.reshape(1, -1))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        answers.append(ids)
    return times, cpu, answers


def _ms(values: list[float], pct: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000, pct)), 3)


def run(**options: Any) -> dict[str, Any]:
    import faiss
    from django.conf import settings

    from retrieval.face_search.index import FaceIndex, IndexSpec, ivf_cells, nprobe_for

    say = (lambda msg: None) if options["quiet"] else log
    n = int(options["n"])
    if n < K:
        raise SystemExit(f"bench face-search needs --n ≥ {K}.")
    faiss.omp_set_num_threads(int(options["threads"]))
    exact_max = options["exact_max"]
    if exact_max is None:
        exact_max = int(settings.VIVA_FACE_INDEX_EXACT_MAX)
    spec = IndexSpec.for_size(n, exact_max)
    if spec.kind != "exact":
        spec.nlist = int(options["nlist"] or ivf_cells(n))
        spec.nprobe = min(spec.nlist, int(options["nprobe"] or nprobe_for(spec.nlist)))
        spec.encoding = options["encoding"] or spec.encoding

    t0 = time.perf_counter()
    say(f"generating {n:,} synthetic faces …")
    vectors, labels = synthetic_faces(
        n,
        per_identity=options["faces_per_identity"],
        spectrum=options["spectrum"],
        noise=options["noise"],
        seed=options["seed"],
    )
    queries = make_queries(vectors, labels, options["queries"], options["seed"])
    data_s = time.perf_counter() - t0
    ids = np.arange(1, n + 1, dtype=np.int64)

    say("exact baseline (IndexFlatIP) …")
    flat = faiss.IndexFlatIP(DIM)
    flat.add(vectors)
    base_times, base_cpu, truth = _timed_single(lambda q: flat.search(q, K)[1][0] + 1, queries)
    flat.reset()  # frees its 2 GB at 1 M faces before ours is built
    gc.collect()

    with tempfile.TemporaryDirectory(prefix="viva-bench-faces-") as tmp:
        index = FaceIndex(Path(tmp), exact_max=exact_max)
        rng = np.random.default_rng(options["seed"] + 2)
        sample = None
        if spec.kind != "exact":
            sample = vectors[rng.choice(n, size=min(n, spec.train_size()), replace=False)]
        say(f"building {spec.label} …")
        chunk = 100_000
        batches = ((ids[s : s + chunk], vectors[s : s + chunk]) for s in range(0, n, chunk))
        built = index.rebuild(batches, total=n, sample=sample, spec=spec, persist=False)
        del sample
        memory = index.memory_bytes()
        say("searching …")
        # Warm-up (page cache, lazy allocations), then the timed single queries.
        for q in queries[:5]:
            index.search(q, K)
        ours_times, ours_cpu, answers = _timed_single(
            lambda q: np.array([i for i, _ in index.search(q, K)]), queries
        )
    recalls = [
        len(np.intersect1d(a, t, assume_unique=True)) / K
        for a, t in zip(answers, truth, strict=True)
    ]
    p50, base_p50 = _ms(ours_times, 50), _ms(base_times, 50)
    return {
        "name": NAME,
        "n": n,
        "k": K,
        "queries": len(queries),
        "threads": int(options["threads"]),
        "index": built["type"],
        "nlist": spec.nlist,
        "nprobe": spec.nprobe,
        "recall_at_100": round(float(np.mean(recalls)), 4),
        "recall_at_100_min": round(float(np.min(recalls)), 4),
        "p50_ms": p50,
        "p95_ms": _ms(ours_times, 95),
        "baseline": "IndexFlatIP (exact)",
        "baseline_p50_ms": base_p50,
        "baseline_p95_ms": _ms(base_times, 95),
        "speedup": round(base_p50 / max(p50, 1e-6), 2),
        "cpu_p50_ms": _ms(ours_cpu, 50),
        "baseline_cpu_p50_ms": _ms(base_cpu, 50),
        "load_average": round(os.getloadavg()[0], 2),
        "ours": p50,
        "ratio": round(base_p50 / max(p50, 1e-6), 2),
        "memory_mb": round(memory / 2**20, 1),
        "baseline_memory_mb": round(n * DIM * 4 / 2**20, 1),
        "build_s": round(built["build_s"], 2),
        "train_s": round(built["train_s"], 2),
        "data_s": round(data_s, 2),
        "identities": int(labels.max()) + 1,
        "target": "recall_at_100 ≥ 0.9, p50_ms ≤ 5 at n = 1,000,000",
    }
