"""Iterative quantization (ITQ; Gong & Lazebnik, CVPR 2011): unsupervised binary codes
from real-valued features, so similarity search works before any hashing model is trained
(DESIGN.md section 5).

PCA (scikit-learn) reduces the centred features to ``n_bits`` dimensions; ITQ then looks
for the rotation ``R`` that minimises the quantisation error ``‖sign(VR) − VR‖²``,
alternating between the codes ``B = sign(VR)`` and the orthogonal Procrustes solution for
``R`` (an SVD). Bits are ``(x − mean) · W > 0`` with ``W = components · R``, a single
matrix the encoder applies after the backbone.

When the features have fewer usable dimensions than bits (a small sample, or a tiny test
backbone with 64 channels), ITQ rotates the ``c < n_bits`` principal components it can
estimate and the remaining bits are random Gaussian projections of the same whitened PCA
space (locality-sensitive hashing); the fit reports how many bits are of which kind.

numpy + scikit-learn only (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA

DEFAULT_ITERATIONS = 50


@dataclass(frozen=True)
class ItqModel:
    """``bits(x) = (x − mean) @ projection > 0``; ``projection`` is ``(d, n_bits)``."""

    mean: np.ndarray
    projection: np.ndarray
    itq_bits: int
    random_bits: int
    quantization_loss: float

    @property
    def n_bits(self) -> int:
        return int(self.projection.shape[1])

    def project(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float32) - self.mean) @ self.projection

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Bits ``(n, n_bits)`` bool."""
        return self.project(features) > 0


def random_rotation(n: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def fit_itq(
    features: np.ndarray,
    n_bits: int = 256,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    seed: int = 0,
) -> ItqModel:
    """Fit PCA + ITQ on ``features`` ``(n, d)``; see the module docstring."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("ITQ needs at least two feature vectors")
    if not np.isfinite(x).all():
        raise ValueError("the features contain NaN or infinite values")
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=0)
    centred = x - mean
    # Components with (numerically) zero variance would only add noise to the codes.
    usable = min(n_bits, x.shape[0] - 1, x.shape[1])
    pca = PCA(n_components=usable, svd_solver="full", random_state=seed).fit(centred)
    keep = int(np.sum(pca.explained_variance_ > 1e-10 * max(pca.explained_variance_[0], 1e-30)))
    keep = max(1, keep)
    components = pca.components_[:keep].T  # (d, c)
    v = centred @ components
    rotation = random_rotation(keep, rng)
    for _ in range(iterations):
        b = np.where(v @ rotation >= 0, 1.0, -1.0)
        u, _s, vt = np.linalg.svd(b.T @ v)
        rotation = (u @ vt).T
    projected = v @ rotation
    loss = float(np.mean((np.where(projected >= 0, 1.0, -1.0) - projected) ** 2))
    projection = components @ rotation  # (d, c)
    extra = n_bits - keep
    if extra > 0:
        # LSH bits on the whitened PCA space: every principal direction counts equally.
        whiten = components / np.sqrt(pca.explained_variance_[:keep])
        projection = np.hstack([projection, whiten @ rng.standard_normal((keep, extra))])
    return ItqModel(
        mean=mean.astype(np.float32),
        projection=projection.astype(np.float32),
        itq_bits=keep,
        random_bits=max(0, extra),
        quantization_loss=loss,
    )


def random_projection_bits(
    features: np.ndarray, n_bits: int, *, seed: int = 0, centre: bool = True
) -> np.ndarray:
    """The baseline ITQ is compared with: signs of random Gaussian projections (LSH)."""
    x = np.asarray(features, dtype=np.float64)
    if centre:
        x = x - x.mean(axis=0)
    rng = np.random.default_rng(seed)
    return (x @ rng.standard_normal((x.shape[1], n_bits))) > 0
