"""Face detection with facenet-pytorch's MTCNN (DESIGN.md 5, thesis 6.3.3).

The thesis' VIVA detects faces with RetinaFace; facenet-pytorch ships MTCNN with its
weights inside the wheel, so detection works offline on every machine. MTCNN's batch
mode needs images of one size: images are grouped by (detection) size and each group
runs as one batch. Huge images are downscaled for detection only (MTCNN's image pyramid
grows with the pixel count, and faces in a 6000-pixel photo are large anyway); boxes and
landmarks are mapped back to the pixels of the original image.
"""

from __future__ import annotations

import functools
import threading
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from django.conf import settings

#: Longest side an image is detected at (original pixels above this are downscaled).
DEFAULT_DETECT_MAX_SIDE = 1280
#: MTCNN's smallest face, in detection pixels (its default).
DETECT_MIN_FACE = 20
#: Images per MTCNN batch (one group of equal-size images).
DETECT_BATCH = 16


@dataclass(frozen=True)
class Detection:
    """One face as MTCNN saw it, in pixels of the original image."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray | None  # (5, 2): left eye, right eye, nose, mouth left, mouth right
    score: float


def detect_max_side() -> int:
    return int(getattr(settings, "VIVA_FACE_DETECT_MAX_SIDE", DEFAULT_DETECT_MAX_SIDE))


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def get_detector(device: str = "cpu"):
    """One MTCNN per device and process (its three small networks load in milliseconds,
    but there is no reason to repeat it per chunk)."""
    from facenet_pytorch import MTCNN

    return MTCNN(
        keep_all=True,
        select_largest=False,  # best score first; the caller sorts again anyway
        post_process=False,
        min_face_size=DETECT_MIN_FACE,
        device=device,
    ).eval()


def detection_scale(width: int, height: int, max_side: int | None = None) -> float:
    """Factor (≤ 1) that brings the longest side down to ``max_side``."""
    limit = max_side or detect_max_side()
    longest = max(width, height)
    return 1.0 if longest <= limit else limit / longest


def _downscale(array: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    if scale >= 1.0:
        return array
    h, w = array.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA)


def detect_batch(
    arrays: list[np.ndarray], *, device: str = "cpu", max_side: int | None = None
) -> list[list[Detection]]:
    """Faces of each RGB ``uint8`` array (H, W, 3), best score first."""
    results: list[list[Detection]] = [[] for _ in arrays]
    groups: dict[tuple[int, int], list[tuple[int, np.ndarray, float]]] = defaultdict(list)
    for i, array in enumerate(arrays):
        h, w = array.shape[:2]
        scale = detection_scale(w, h, max_side)
        small = np.ascontiguousarray(_downscale(array, scale))
        groups[small.shape[:2]].append((i, small, scale))
    detector = get_detector(device)
    for members in groups.values():
        for start in range(0, len(members), DETECT_BATCH):
            part = members[start : start + DETECT_BATCH]
            batch = np.stack([m[1] for m in part])
            with _LOCK:  # MTCNN modules are shared by the threads of one process
                boxes, probs, points = detector.detect(batch, landmarks=True)
            for (index, _small, scale), b, p, pts in zip(part, boxes, probs, points, strict=True):
                results[index] = _detections(b, p, pts, 1.0 / scale)
    return results


def _detections(boxes, probs, points, factor: float) -> list[Detection]:
    if boxes is None or len(boxes) == 0:
        return []
    found = []
    for box, prob, pts in zip(boxes, probs, points, strict=True):
        if prob is None:
            continue
        x1, y1, x2, y2 = (float(v) * factor for v in box)
        marks = None if pts is None else np.asarray(pts, dtype=np.float32) * factor
        found.append(Detection((x1, y1, x2, y2), marks, float(prob)))
    found.sort(key=lambda d: d.score, reverse=True)
    return found
