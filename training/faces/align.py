"""Face alignment: a similarity transform (rotation, uniform scale, translation) maps the
five MTCNN landmarks onto a canonical 160×160 template, so every crop is upright with
the eyes level, the size FaceNet's InceptionResnetV1 expects (thesis 6.3.3: detect,
align, embed).

The template is the widely used five-point layout of ArcFace (112×112) scaled to 160
pixels and shrunk a little towards the centre, so the crop keeps some forehead and chin
like the margin of facenet-pytorch's box crops the VGGFace2 model was trained on.
"""

from __future__ import annotations

import numpy as np

CROP_SIZE = 160

_ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],  # left eye (in the picture)
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float32,
)
_SHRINK = 0.9  # < 1: a little more context around the face than ArcFace's crop
_CENTRE = np.array([56.0, 56.0], dtype=np.float32)
TEMPLATE = ((_ARCFACE_112 - _CENTRE) * _SHRINK + _CENTRE) * (CROP_SIZE / 112.0)


def similarity_matrix(landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray | None:
    """The 2×3 matrix taking image pixels to crop pixels, or None when the landmarks do
    not define one (degenerate points)."""
    import cv2

    src = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    dst = TEMPLATE * (size / CROP_SIZE)
    matrix, _inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    if matrix is None or not np.all(np.isfinite(matrix)):
        return None
    return matrix


def box_matrix(box, size: int = CROP_SIZE, margin: float = 0.2) -> np.ndarray:
    """Fallback without landmarks: the box, widened by ``margin``, squared and scaled."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1 + margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    s = size / max(side, 1e-6)
    return np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]], dtype=np.float64)


def align_face(
    image: np.ndarray, landmarks: np.ndarray | None, box=None, size: int = CROP_SIZE
) -> np.ndarray:
    """The aligned ``size``×``size`` RGB crop of one face of ``image`` (H, W, 3 uint8).

    Pixels outside the image are black, as in facenet-pytorch's crops at the border.
    """
    import cv2

    matrix = similarity_matrix(landmarks, size) if landmarks is not None else None
    if matrix is None:
        if box is None:
            raise ValueError("A face needs landmarks or a box to be cropped.")
        matrix = box_matrix(box, size)
    return cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2×3 matrix to (n, 2) points (tests check where the eyes end up)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ matrix[:, :2].T + matrix[:, 2]
