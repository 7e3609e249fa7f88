"""Quality filters of detected faces (issue 7): detector score, size, sharpness and box
shape, with thresholds from the settings.

Why: archive keyframes are full of tiny, blurred, half-turned faces in crowds. Their
embeddings are unreliable and would pollute clustering, SVM training and the face index
(the thesis' VIVA keeps only faces a person can recognise as well). Rejected faces are
still reported, with a reason the user understands, so a page can say why an image that
clearly shows a face yields nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.conf import settings


@dataclass(frozen=True)
class Thresholds:
    min_score: float = 0.90
    min_size: int = 40
    min_sharpness: float = 15.0
    max_aspect: float = 2.0

    @classmethod
    def from_settings(cls) -> Thresholds:
        return cls(
            min_score=float(getattr(settings, "VIVA_FACE_MIN_SCORE", cls.min_score)),
            min_size=int(getattr(settings, "VIVA_FACE_MIN_SIZE", cls.min_size)),
            min_sharpness=float(getattr(settings, "VIVA_FACE_MIN_SHARPNESS", cls.min_sharpness)),
            max_aspect=float(getattr(settings, "VIVA_FACE_MAX_ASPECT", cls.max_aspect)),
        )


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop: low for blurred faces (Pech-Pacheco
    et al.'s focus measure, the usual cheap blur test)."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def box_sides(box) -> tuple[float, float]:
    x1, y1, x2, y2 = box
    return max(0.0, x2 - x1), max(0.0, y2 - y1)


def assess(box, score: float, crop: np.ndarray, limits: Thresholds) -> tuple[float, str]:
    """``(quality, reason)``: quality in 0–1 (higher is better); reason is "" when the
    face passes every filter, else why it was rejected (the first failing filter)."""
    w, h = box_sides(box)
    short, long = min(w, h), max(w, h)
    sharp = sharpness(crop)
    # Each factor saturates at 1 where more no longer helps recognition: twice the
    # minimum size, four times the minimum sharpness; the score counts above 0.5.
    size_q = min(1.0, short / max(1.0, 2.0 * limits.min_size))
    sharp_q = min(1.0, sharp / max(1e-6, 4.0 * limits.min_sharpness))
    score_q = min(1.0, max(0.0, (score - 0.5) / 0.5))
    quality = float((size_q * sharp_q * score_q) ** (1.0 / 3.0))
    aspect = long / max(short, 1e-6)
    if score < limits.min_score:
        reason = (
            f"The detector is not sure this is a face (score {score:.2f}, at least "
            f"{limits.min_score:.2f} needed)."
        )
    elif short < limits.min_size:
        reason = (
            f"The face is too small ({short:.0f} pixels; at least {limits.min_size} needed "
            "for recognition)."
        )
    elif aspect > limits.max_aspect:
        reason = (
            f"The face box is too narrow or too flat (sides {w:.0f}×{h:.0f}; probably a "
            "face cut off at the border or a face in profile)."
        )
    elif sharp < limits.min_sharpness:
        reason = (
            f"The face is too blurred (sharpness {sharp:.1f}, at least "
            f"{limits.min_sharpness:g} needed)."
        )
    else:
        reason = ""
    return quality, reason
