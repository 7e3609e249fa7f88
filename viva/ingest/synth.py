"""Synthetic videos with known shot boundaries, built from the images that ship with scikit-image.

Why: tests, the demo archive and the ``shots`` benchmark need real-looking footage with an exact
ground truth, and nothing may be downloaded (archives are often offline, DESIGN.md section 6). Every
scene is a still image seen through a slowly panning/zooming virtual camera with mild sensor noise,
so consecutive frames are never identical and a detector has to tell camera motion from a shot
change. Scenes are joined by hard cuts, dissolves (cross-fades) or fades through black, the
transition types discussed in section 6.1 of the thesis (seed/000_850d00bef62b8b1c.txt).

Frame indices are 0-based positions in presentation order, the same numbering that
:mod:`viva.ingest.shots` uses.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import av
import cv2
import numpy as np

Transition = Literal["cut", "dissolve", "fade"]

# Images of skimage.data that are bundled with the wheel (no pooch download needed).  Grey images
# are coloured by the tint of the variant, so they still look different from each other.
_BASE_IMAGES: tuple[str, ...] = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "moon",
    "clock",
    "grass",
    "gravel",
    "brick",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "retina",
    "motorcycle",
    "page",
    "cell",
)
_VARIANTS_PER_IMAGE = 4

#: Number of distinct-looking scene variants (crop x flip x colour cast of each base image).
N_VARIANTS: int = len(_BASE_IMAGES) * _VARIANTS_PER_IMAGE

# Oversampling of the rendered source relative to the output frame: the virtual camera window moves
# and scales inside it, so pan and zoom never run out of picture.
_SOURCE_MARGIN = 1.4


@dataclass(frozen=True)
class SceneSpec:
    """One scene of a synthetic video.

    ``variant`` picks the picture (``0 <= variant < N_VARIANTS``; larger values wrap around).
    ``n_frames`` counts the frames that show only this scene; a gradual transition adds
    ``transition_frames`` mixed frames *before* the scene. ``transition`` says how the scene is
    entered (ignored for the first scene). ``pan`` is the camera travel over the scene as a fraction
    of the frame size (dx, dy); ``zoom`` is the (start, end) magnification (1 = widest view).
    ``monochrome`` renders the scene in grey, like the black-and-white recordings that make up much
    of historical archives (thesis section 6.1.4): cuts between grey shots carry no colour cue.
    """

    variant: int
    n_frames: int
    transition: Transition = "cut"
    transition_frames: int = 12
    pan: tuple[float, float] = (0.0, 0.0)
    zoom: tuple[float, float] = (1.0, 1.0)
    monochrome: bool = False


@dataclass
class SyntheticTruth:
    """Ground truth of a synthetic video.

    ``hard_cuts`` holds the index of the first frame of each shot that starts with a cut. ``fades``
    holds (first, last) mixed frame of each gradual transition. ``shots`` are inclusive (start, end)
    frame ranges covering every frame; a gradual transition is split in its middle, so the first
    half of its frames belongs to the old shot and the second half to the new one.
    """

    fps: float
    n_frames: int
    width: int
    height: int
    hard_cuts: list[int] = field(default_factory=list)
    fades: list[tuple[int, int]] = field(default_factory=list)
    shots: list[tuple[int, int]] = field(default_factory=list)


@functools.cache
def _base_image(name: str) -> np.ndarray:
    """Load one bundled skimage image as RGB uint8 (cached: astronaut alone takes ~0.4 s)."""
    import skimage.data  # noqa: PLC0415 - heavy import, only needed here

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "motorcycle":
            img = skimage.data.stereo_motorcycle()[0]
        else:
            img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (img.astype(np.float64) * (255.0 / max(float(img.max()), 1.0))).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


@functools.lru_cache(maxsize=256)
def variant_image(variant: int) -> np.ndarray:
    """The RGB picture of a scene variant: a crop, mirror and colour cast of a base image.

    Sub-variant 0 is the full image with a mild cast; the others crop different parts, mirror them
    and apply stronger casts, so neighbouring variants of the same base still look like different
    shots.
    """
    variant %= N_VARIANTS
    base_idx, sub = variant % len(_BASE_IMAGES), variant // len(_BASE_IMAGES)
    img = _base_image(_BASE_IMAGES[base_idx])
    rng = np.random.default_rng(1000 + variant)
    h, w = img.shape[:2]
    if sub > 0:
        frac = rng.uniform(0.55, 0.75)
        ch, cw = int(h * frac), int(w * frac)
        y0 = [0, h - ch, (h - ch) // 2][sub - 1]
        x0 = [w - cw, 0, (w - cw) // 2][sub - 1]
        img = img[y0 : y0 + ch, x0 : x0 + cw]
    if sub in (1, 3):
        img = img[:, ::-1]
    strength = 0.12 if sub == 0 else 0.35
    cast = 1.0 + rng.uniform(-strength, strength, size=3)
    gamma = rng.uniform(0.8, 1.25)
    lut = np.clip(255.0 * (np.arange(256)[:, None] / 255.0) ** gamma * cast[None, :], 0, 255)
    out = np.empty_like(img)
    for c in range(3):
        out[:, :, c] = lut[:, c].astype(np.uint8)[img[:, :, c]]
    return out


def _cover_resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale and centre-crop ``img`` so that it exactly covers width x height (no borders)."""
    h, w = img.shape[:2]
    scale = max(width / w, height / h)
    nw, nh = max(width, math.ceil(w * scale)), max(height, math.ceil(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(img, (nw, nh), interpolation=interp)
    y0, x0 = (nh - height) // 2, (nw - width) // 2
    return np.ascontiguousarray(resized[y0 : y0 + height, x0 : x0 + width])


class _SceneRenderer:
    """Renders frame ``u`` of one scene: a moving, zooming camera window over the source picture."""

    def __init__(self, spec: SceneSpec, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.sw, self.sh = round(width * _SOURCE_MARGIN), round(height * _SOURCE_MARGIN)
        source = _cover_resize(variant_image(spec.variant), self.sw, self.sh)
        if spec.monochrome:
            grey = cv2.cvtColor(source, cv2.COLOR_RGB2GRAY)
            source = np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
        self.source = source
        self.n = max(spec.n_frames, 1)
        self.zoom = spec.zoom
        # Keep the whole path of the window inside the source: the centre may move by at most the
        # slack left by the widest window of the scene.
        z_min = max(min(spec.zoom), 1.0)
        max_dx = (self.sw - width / z_min) / 2
        max_dy = (self.sh - height / z_min) / 2
        dx = float(np.clip(spec.pan[0] * width, -2 * max_dx, 2 * max_dx))
        dy = float(np.clip(spec.pan[1] * height, -2 * max_dy, 2 * max_dy))
        self.c0 = np.array([self.sw / 2 - dx / 2, self.sh / 2 - dy / 2])
        self.c1 = np.array([self.sw / 2 + dx / 2, self.sh / 2 + dy / 2])

    def frame(self, u: int) -> np.ndarray:
        p = min(max(u / max(self.n - 1, 1), 0.0), 1.0)  # the camera rests during transitions
        zoom = max(self.zoom[0] + (self.zoom[1] - self.zoom[0]) * p, 1.0)
        cx, cy = self.c0 + (self.c1 - self.c0) * p
        s = 1.0 / zoom  # source pixels per output pixel
        # Inverse map: output (x, y) -> source (cx + s (x - W/2), cy + s (y - H/2)).
        m = np.array(
            [[s, 0.0, cx - s * self.width / 2], [0.0, s, cy - s * self.height / 2]],
            dtype=np.float64,
        )
        return cv2.warpAffine(
            self.source,
            m,
            (self.width, self.height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )


def random_scenes(
    n_scenes: int,
    *,
    fps: float = 25,
    fade_every: int = 0,
    seed: int = 0,
    scene_seconds: tuple[float, float] = (0.8, 2.4),
    transition_frames: tuple[int, int] = (10, 15),
    monochrome_share: float = 0.25,
) -> list[SceneSpec]:
    """Draw a plausible scene list: varied pictures, durations, camera moves and transitions.

    Consecutive scenes never share a base image (a cut to another crop of the same picture is a
    different, harder problem than the one this ground truth describes). Every ``fade_every``-th
    transition is gradual, alternating dissolves and fades through black; 0 means hard cuts only.
    About ``monochrome_share`` of the scenes are black and white.
    """
    rng = np.random.default_rng(seed)
    n_base = len(_BASE_IMAGES)
    scenes: list[SceneSpec] = []
    prev_base = -1
    for i in range(n_scenes):
        while True:
            variant = int(rng.integers(N_VARIANTS))
            if variant % n_base != prev_base:
                break
        prev_base = variant % n_base
        n_frames = max(15, round(rng.uniform(*scene_seconds) * fps))
        transition: Transition = "cut"
        if i > 0 and fade_every > 0 and i % fade_every == 0:
            transition = "dissolve" if (i // fade_every) % 2 else "fade"
        # Camera: mostly slow pans/zooms, sometimes a brisk pan (up to ~5 px/frame at 640 wide).
        speed = rng.choice([0.0, 0.05, 0.15, 0.3], p=[0.2, 0.35, 0.3, 0.15])
        angle = rng.uniform(0, 2 * math.pi)
        z0 = rng.uniform(1.0, 1.15)
        z1 = z0 * rng.choice([1.0, rng.uniform(0.9, 1.15)])
        scenes.append(
            SceneSpec(
                variant=variant,
                n_frames=n_frames,
                transition=transition,
                transition_frames=int(rng.integers(transition_frames[0], transition_frames[1] + 1)),
                pan=(float(speed * math.cos(angle)), float(speed * math.sin(angle))),
                zoom=(float(z0), float(max(z1, 1.0))),
                monochrome=bool(rng.random() < monochrome_share),
            )
        )
    return scenes


def _open_encoder(
    path: str | os.PathLike[str], fps: float, width: int, height: int, preset: str
) -> tuple[av.container.OutputContainer, av.VideoStream]:
    """Open an H.264 (or MPEG-4 part 2 where x264 is missing) yuv420p encoder."""
    container = av.open(os.fspath(path), mode="w")
    rate = Fraction(fps).limit_denominator(1001)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if codec == "libx264":
        stream.options = {"preset": preset, "crf": "23"}
    else:
        stream.bit_rate = 2_000_000
    return container, stream


def make_synthetic_video(
    path: str | os.PathLike[str],
    scenes: Sequence[SceneSpec] | None = None,
    *,
    n_scenes: int = 8,
    fps: float = 25,
    size: tuple[int, int] = (640, 360),
    fade_every: int = 0,
    seed: int = 0,
    noise: float = 2.5,
    scene_seconds: tuple[float, float] = (0.8, 2.4),
    preset: str = "superfast",
    frame_hook: Callable[[int, np.ndarray], np.ndarray] | None = None,
) -> SyntheticTruth:
    """Write a synthetic video to ``path`` and return its ground truth.

    Without ``scenes``, :func:`random_scenes` draws ``n_scenes`` scenes from ``seed`` and
    ``fade_every``. ``noise`` is the standard deviation of the added sensor noise (grey levels).
    ``size`` is (width, height); both must be even for yuv420p. ``preset`` is the x264 speed preset
    (superfast keeps generation several times faster than real time and the files realistic: CABAC,
    B-frames). ``frame_hook(index, rgb)`` may alter frames (tests use it to insert flashes); it must
    return an array of the same shape.
    """
    width, height = size
    if width % 2 or height % 2:
        raise ValueError("width and height must be even for yuv420p")
    if scenes is None:
        scenes = random_scenes(
            n_scenes, fps=fps, fade_every=fade_every, seed=seed, scene_seconds=scene_seconds
        )
    if not scenes:
        raise ValueError("at least one scene is needed")
    rng = np.random.default_rng(seed + 7919)
    # Noise as two saturating uint8 layers (add, then subtract): much cheaper per frame than float
    # noise, and a small bank of layers drawn at random per frame looks like fresh noise.
    bank = 6
    pos = [
        np.clip(np.abs(rng.normal(0, noise, (height, width, 3))), 0, 255).astype(np.uint8)
        for _ in range(bank)
    ]
    neg = [
        np.clip(np.abs(rng.normal(0, noise, (height, width, 3))), 0, 255).astype(np.uint8)
        for _ in range(bank)
    ]

    truth = SyntheticTruth(fps=float(fps), n_frames=0, width=width, height=height)
    container, stream = _open_encoder(path, fps, width, height, preset)
    index = 0
    shot_start = 0

    def emit(rgb: np.ndarray) -> None:
        nonlocal index
        if frame_hook is not None:
            rgb = frame_hook(index, rgb)
        if noise > 0:
            rgb = cv2.subtract(cv2.add(rgb, pos[rng.integers(bank)]), neg[rng.integers(bank)])
        yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = index
        for packet in stream.encode(frame):
            container.mux(packet)
        index += 1

    try:
        prev: _SceneRenderer | None = None
        for spec in scenes:  # the transition of the first scene is ignored: nothing precedes it
            cur = _SceneRenderer(spec, width, height)
            if prev is not None:
                if spec.transition == "cut":
                    truth.shots.append((shot_start, index - 1))
                    truth.hard_cuts.append(index)
                    shot_start = index
                else:
                    n_mix = max(2, spec.transition_frames)
                    start = index
                    boundary = start + n_mix // 2
                    for j in range(n_mix):
                        x = (j + 1) / (n_mix + 1)
                        a = prev.frame(prev.n + j)
                        b = cur.frame(j - n_mix)
                        if spec.transition == "dissolve":
                            mixed = cv2.addWeighted(a, 1.0 - x, b, x, 0.0)
                        elif x < 0.5:
                            mixed = cv2.convertScaleAbs(a, alpha=1.0 - 2.0 * x)
                        else:
                            mixed = cv2.convertScaleAbs(b, alpha=2.0 * x - 1.0)
                        if index == boundary:
                            truth.shots.append((shot_start, index - 1))
                            shot_start = index
                        emit(mixed)
                    truth.fades.append((start, index - 1))
            for u in range(spec.n_frames):
                emit(cur.frame(u))
            prev = cur
        for packet in stream.encode(None):
            container.mux(packet)
    except BaseException:
        container.close()
        os.remove(path)  # no half-written video is left behind
        raise
    container.close()
    truth.shots.append((shot_start, index - 1))
    truth.n_frames = index
    return truth
