"""ITQ codes (unsupervised hashing) and the mAP@k of Hamming rankings."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from retrieval.hashing.bits import pack_bits
from retrieval.hashing.evaluate import map_at_k
from retrieval.hashing.itq import fit_itq, random_projection_bits


def clustered(n_clusters=20, per=40, d=128, rank=16, noise=3.0, seed=0):
    """Clusters on a low-dimensional subspace of a high-dimensional space, plus noise
    in all dimensions (like pooled CNN features: most variance in few directions)."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, d))
    centres = rng.standard_normal((n_clusters, rank)) @ basis
    labels = np.repeat(np.arange(n_clusters), per)
    return centres[labels] + noise * rng.standard_normal((len(labels), d)), labels


def test_itq_preserves_neighbours_better_than_random_projections():
    x, labels = clustered()
    idx = np.arange(len(x))
    results = {}
    for n_bits in (16, 32):
        itq = fit_itq(x, n_bits, seed=0)
        assert itq.itq_bits == n_bits and itq.random_bits == 0
        ours = itq.encode(x)
        lsh = random_projection_bits(x, n_bits, seed=1)
        pad = np.zeros((len(x), 256 - n_bits), dtype=bool)  # same length for the ranking
        score_itq, chance = map_at_k(
            pack_bits(np.hstack([ours, pad])),
            labels,
            pack_bits(np.hstack([ours, pad])),
            labels,
            20,
            exclude=idx,
        )
        score_lsh, _ = map_at_k(
            pack_bits(np.hstack([lsh, pad])),
            labels,
            pack_bits(np.hstack([lsh, pad])),
            labels,
            20,
            exclude=idx,
        )
        results[n_bits] = (score_itq, score_lsh, chance)
    for score_itq, score_lsh, chance in results.values():
        assert score_itq > score_lsh + 0.05
        assert score_itq > 10 * chance


def test_itq_rotation_lowers_quantisation_error_and_balances_bits():
    x, _ = clustered(seed=1)
    one = fit_itq(x, 32, iterations=0, seed=0)
    many = fit_itq(x, 32, iterations=50, seed=0)
    assert many.quantization_loss < one.quantization_loss
    ones = many.encode(x).mean(axis=0)
    assert 0.1 < ones.min() and ones.max() < 0.9  # centred PCA: no near-constant bits


def test_itq_fills_missing_dimensions_with_random_bits():
    x, _ = clustered(n_clusters=5, per=10, d=64)
    model = fit_itq(x, 256)
    assert model.n_bits == 256
    assert model.itq_bits <= 49 and model.itq_bits + model.random_bits == 256
    assert model.encode(x).shape == (50, 256)
    with pytest.raises(ValueError):
        fit_itq(x[:1], 256)
    with pytest.raises(ValueError):
        fit_itq(np.full((5, 4), np.nan), 8)


def test_map_at_k_equals_sklearn_average_precision_on_a_full_ranking():
    rng = np.random.default_rng(5)
    bits = rng.random((60, 256)) < 0.5
    labels = rng.integers(0, 3, 60)
    codes = pack_bits(bits)
    query = codes[:1]
    db = codes[1:]
    value, chance = map_at_k(query, labels[:1], db, labels[1:], k=len(db))
    dist = (bits[1:] != bits[0]).sum(axis=1)
    # ties broken by database position, as map_at_k does
    score = -(dist * len(db) + np.arange(len(db))).astype(float)
    expected = average_precision_score(labels[1:] == labels[0], score)
    assert value == pytest.approx(expected)
    assert chance == pytest.approx(np.mean(labels[1:] == labels[0]))


def test_map_at_k_perfect_and_excluding_the_query_itself():
    bits = np.zeros((6, 256), dtype=bool)
    bits[3:, :128] = True
    labels = np.array([0, 0, 0, 1, 1, 1])
    codes = pack_bits(bits)
    value, chance = map_at_k(codes, labels, codes, labels, k=2, exclude=np.arange(6))
    assert value == 1.0
    assert chance == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="code lengths differ"):
        map_at_k(codes[:, :8], labels, codes, labels)
