"""Shot boundary detection, keyframe choice and frame extraction for video ingest.

Why this exists: every automatic label in VIVA hangs off a shot (thesis section 6.1.1:
"automatically generated labels are assigned to video shots. Therefore, shot boundary detection has
to be performed"), and concept detection and similarity search run on up to five keyframes spread
over each shot (section 6.2.1). Transitions are abrupt (cuts) or gradual (fades, dissolves; section
6.1.1).

Design, in one pass over the decoded video and without any deep model:

* Decode with PyAV (threaded) and keep, per frame, only 64-pixel-wide thumbnails of the Y, U and V
  planes read straight from the decoder's buffers (no colour conversion) plus small colour
  histograms. Deblocking is skipped while detecting: it costs decode time and does not change which
  frames belong together.
* **Cuts** are isolated spikes of a motion-compensated frame difference (the best of 9 small shifts,
  so pans and zooms do not look like cuts), judged against the local activity around them — an
  adaptive threshold rather than a global one, in the spirit of the threshold-free detectors of
  section 6.2.1. A spike after which the old picture comes back is a flash, not a cut.
* **Gradual transitions**: a dissolve mixes two pictures linearly in time, so the frame in the
  middle of a window is the average of the window's ends; camera motion breaks that relation (an
  average of two shifted pictures is blurred, the real middle frame is sharp). This linearity test
  plays the role of the camera-motion false-alarm removal of section 6.1.1. Fades through black (or
  any flat colour) are found as a dip of the picture's contrast between two textured shots.

Frame indices count decoded frames in presentation order from 0; :func:`extract_frames` uses the
same numbering, so indices from :func:`detect_shots` can be fed to it unchanged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import av
import cv2
import numpy as np
from PIL import Image

__all__ = [
    "DetectionCancelled",
    "VideoError",
    "VideoInfo",
    "detect_shots",
    "extract_frames",
    "keyframe_indices",
    "probe_video",
]

# Width of the analysis thumbnails: big enough to see a cut between two dark, similar pictures,
# small enough that features cost far less than decoding.
THUMB_WIDTH = 64
# Pixel formats whose first three planes are 8-bit Y, U, V: read without conversion.
_PLANAR_YUV = {
    "yuv420p",
    "yuvj420p",
    "yuv422p",
    "yuvj422p",
    "yuv444p",
    "yuvj444p",
    "yuv411p",
    "yuv410p",
    "yuv440p",
    "yuvj440p",
}
# Give up on a file when this many packets in a row fail to decode.
_MAX_CONSECUTIVE_ERRORS = 200


class VideoError(Exception):
    """A file cannot be used as a video; ``str(error)`` is a message fit to show to the user."""


class DetectionCancelled(Exception):
    """Raised by :func:`detect_shots` when its ``should_stop`` callable returned True."""


@dataclass
class VideoInfo:
    """Basic facts about a video stream; ``n_frames`` may be an estimate when returned by probe."""

    fps: float
    n_frames: int
    duration_ms: int
    width: int
    height: int


# --------------------------------------------------------------------------------------------------
# Opening and probing


def _open(path: str | os.PathLike[str]) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open ``path`` and return its first video stream, translating failures into VideoError."""
    name = os.path.basename(os.fspath(path))
    if not os.path.isfile(path):
        raise VideoError(f"{name}: file not found")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{name}: the file is empty")
    try:
        container = av.open(os.fspath(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{name}: not a readable video file ({_reason(exc)})") from exc
    if container.format.name == "image2" or container.format.name.endswith("_pipe"):
        container.close()  # FFmpeg reads a PNG or JPEG as a one-frame video
        raise VideoError(f"{name}: this is a still image, not a video")
    if not container.streams.video:
        container.close()
        raise VideoError(f"{name}: the file contains no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None or stream.codec_context.name is None:
        container.close()
        raise VideoError(f"{name}: the video codec is not supported")
    return container, stream


def _reason(exc: BaseException) -> str:
    """Short text of an FFmpeg error without the file path FFmpeg likes to repeat."""
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(":")[0].strip() or exc.__class__.__name__


def _fps(stream: av.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and float(rate) > 0 and math.isfinite(float(rate)):
            return float(rate)
    return 25.0


def _duration_ms(container: av.container.InputContainer, stream: av.VideoStream) -> int | None:
    if stream.duration and stream.time_base:
        return round(float(stream.duration * stream.time_base) * 1000)
    if container.duration:
        return round(container.duration / 1000)  # container.duration is in microseconds
    return None


def _decoded_frames(
    container: av.container.InputContainer, stream: av.VideoStream, name: str
) -> Iterator[av.VideoFrame]:
    """Yield decoded frames in presentation order, skipping packets the decoder rejects.

    Broken packets in the middle of archive files are common; dropping them keeps the rest of the
    video usable. The numbering stays deterministic, so detection and extraction agree.
    """
    errors = 0
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                errors += 1
                if errors >= _MAX_CONSECUTIVE_ERRORS:
                    raise VideoError(f"{name}: the video data is corrupt") from None
                continue
            errors = 0
            yield from frames
    except av.FFmpegError as exc:
        raise VideoError(f"{name}: the video data is corrupt ({_reason(exc)})") from exc


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Read the stream header and decode the first frame, so a bad upload is refused early.

    ``n_frames`` comes from the container when it records it, otherwise from counting packets
    (cheap: no decoding). :func:`detect_shots` returns the exact count.
    """
    name = os.path.basename(os.fspath(path))
    container, stream = _open(path)
    try:
        first = next(_decoded_frames(container, stream, name), None)
        if first is None:
            raise VideoError(f"{name}: the video has no decodable frames")
        fps = _fps(stream)
        n_frames = int(stream.frames or 0)
        duration = _duration_ms(container, stream)
        if n_frames <= 0:
            container.seek(0)
            n_frames = sum(1 for p in container.demux(stream) if p.size)
        if duration is None:
            duration = round(n_frames * 1000 / fps)
        return VideoInfo(
            fps=fps,
            n_frames=n_frames,
            duration_ms=duration,
            width=first.width,
            height=first.height,
        )
    finally:
        container.close()


# --------------------------------------------------------------------------------------------------
# Per-frame features


class _Thumbnailer:
    """Turns decoded frames into small uint8 Y/U/V thumbnails.

    The planes are read straight from the decoder's buffers (no colour conversion), point-sampled on
    a grid twice as dense as the thumbnail, then averaged 2x2. An area resize of a whole plane costs
    more than decoding a small frame; this keeps the cost to a few tens of microseconds per frame
    while each thumbnail pixel still averages four samples.
    """

    def __init__(self, width: int, height: int) -> None:
        self.size = (THUMB_WIDTH, max(8, round(THUMB_WIDTH * height / max(width, 1))))
        self.grid = (2 * self.size[0], 2 * self.size[1])

    def planes(self, frame: av.VideoFrame) -> list[np.ndarray]:
        if frame.format.name not in _PLANAR_YUV:
            frame = frame.reformat(format="yuv420p")
        out = []
        for plane in frame.planes[:3]:
            buf = np.frombuffer(plane, np.uint8)
            arr = buf[: plane.height * plane.line_size].reshape(plane.height, plane.line_size)
            grid = cv2.resize(arr[:, : plane.width], self.grid, interpolation=cv2.INTER_NEAREST)
            out.append(cv2.resize(grid, self.size, interpolation=cv2.INTER_AREA))
        return out


def _histogram(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """16 luma bins + 8x8 joint chroma bins over the range colours actually use, as one vector."""
    hy = cv2.calcHist([y], [0], None, [16], [0, 256])
    huv = cv2.calcHist([u, v], [0, 1], None, [8, 8], [64, 192, 64, 192])
    return np.concatenate([hy.ravel(), huv.ravel()]) / np.float32(y.size)


_SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _shifted_mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of ``b`` against ``a`` shifted by up to one pixel; the minimum.

    Why: a one-pixel shift at thumbnail size is a camera pan of ~10 px at full size; taking the best
    shift removes most of the difference that motion causes, while two different pictures differ at
    every shift.
    """
    h, w = b.shape
    core = b[1 : h - 1, 1 : w - 1]
    best = min(
        cv2.norm(a[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx], core, cv2.NORM_L1)
        for dy, dx in _SHIFTS
    )
    return best / core.size


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return cv2.norm(a, b, cv2.NORM_L1) / a.size


@dataclass
class _Series:
    """Per-frame measurements; index t describes frame t (and its predecessors)."""

    d1: np.ndarray  # motion-compensated luma difference frame t-1 -> t (grey levels)
    c1: np.ndarray  # chroma difference t-1 -> t
    h1: np.ndarray  # histogram distance t-1 -> t (0..1)
    persist: np.ndarray  # least difference between frames t-3..t-1 and t..t+2 (only near jumps)
    contrast: np.ndarray  # spatial std of the luma thumbnail
    mid_gap: np.ndarray  # luma + chroma difference between frames c-k and c+k (index c)
    mid_resid: np.ndarray  # |frame c - mean(frame c-k, frame c+k)|, luma + chroma (index c)
    mid_hist: np.ndarray  # histogram distance between c-k and c+k (index c)


# Half-width of the window of the dissolve test: transitions up to 2 * _K frames are seen whole,
# longer ones still pass the test piecewise.
_K = 8


def _measure(
    frames: Iterable[av.VideoFrame],
    width: int,
    height: int,
    n_hint: int,
    min_diff: float,
    on_progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
    progress_every: int,
) -> tuple[_Series, int]:
    """One pass over the frames, keeping a ring of recent thumbnails and per-frame scalars only."""
    thumb = _Thumbnailer(width, height)
    ring = 2 * _K + 1
    ys: list[np.ndarray] = [np.empty(0, np.uint8)] * ring
    uvs: list[np.ndarray] = [np.empty(0, np.uint8)] * ring
    hs: list[np.ndarray] = [np.empty(0, np.float32)] * ring
    names = list(_Series.__dataclass_fields__)
    cap = max(n_hint + 16, 1024)
    store = np.zeros((len(names), cap), np.float32)
    d1, c1, h1, persist, contrast, mid_gap, mid_resid, mid_hist = store
    t = -1
    for t, frame in enumerate(frames):
        if t >= cap:
            cap *= 2
            bigger = np.zeros((len(names), cap), np.float32)
            bigger[:, : store.shape[1]] = store
            store = bigger
            d1, c1, h1, persist, contrast, mid_gap, mid_resid, mid_hist = store
        y, u, v = thumb.planes(frame)
        uv = cv2.merge([u, v])
        hist = _histogram(y, u, v)
        slot = t % ring
        ys[slot], uvs[slot], hs[slot] = y, uv, hist
        contrast[t] = cv2.meanStdDev(y)[1][0, 0]
        if t >= 1:
            p = (t - 1) % ring
            d1[t] = _shifted_mad(ys[p], y)
            c1[t] = _mad(uvs[p], uv)
            h1[t] = 0.5 * cv2.norm(hs[p], hist, cv2.NORM_L1)
        # Persistence test for a candidate cut at j = t-2, now that frame j+2 exists: does any
        # frame after the jump look like a frame before it? (a flash of up to two frames does)
        j = t - 2
        if j >= 1 and d1[j] + c1[j] >= min_diff:
            persist[j] = min(
                _shifted_mad(ys[before % ring], ys[after % ring])
                for before in range(max(0, j - 3), j)
                for after in range(j, t + 1)
            )
        if t >= 2 * _K:
            c = t - _K
            first, mid = (t - 2 * _K) % ring, c % ring
            a, m, auv, muv = ys[first], ys[mid], uvs[first], uvs[mid]
            mid_gap[c] = _mad(a, y) + _mad(auv, uv)
            mid_resid[c] = _mad(m, cv2.addWeighted(a, 0.5, y, 0.5, 0.0)) + _mad(
                muv, cv2.addWeighted(auv, 0.5, uv, 0.5, 0.0)
            )
            mid_hist[c] = 0.5 * cv2.norm(hs[(t - 2 * _K) % ring], hist, cv2.NORM_L1)
        if (t + 1) % progress_every == 0:
            if should_stop is not None and should_stop():
                raise DetectionCancelled("shot detection was cancelled")
            if on_progress is not None:
                on_progress(t + 1, max(n_hint, t + 1))
    n = t + 1
    series = _Series(*(row[:n].copy() for row in store))
    return series, n


# --------------------------------------------------------------------------------------------------
# Decisions on the measured series


def _reference(x: np.ndarray, t: int, radius: int, rank: int = 3) -> float:
    """The ``rank``-th largest value of ``x`` within ``radius`` of ``t``, ``t`` itself excluded.

    Why not the maximum: up to ``rank - 1`` other spikes (a neighbouring cut in a fast montage, a
    flash) may sit in the window without masking this one, while the many similar steps of a fade or
    of camera motion still raise the reference to their own level.
    """
    lo, hi = max(0, t - radius), min(len(x), t + radius + 1)
    window = np.concatenate([x[lo:t], x[t + 1 : hi]])
    if window.size < rank:
        return 0.0
    return float(np.partition(window, window.size - rank)[window.size - rank])


def _find_cuts(
    s: _Series,
    threshold: float,
    min_diff: float,
    flash_ratio: float,
    window: int,
    hist_jump: float,
) -> list[int]:
    """Frames that start a new shot with an abrupt change.

    A frame t is a cut when its difference to frame t-1 (``d1 + c1``, luma and chroma)

    * is at least ``min_diff`` grey levels (noise, and the quality jump at the key frames of a
      static picture, stay below that after motion compensation; cuts between different pictures
      measure 20 and more),
    * stands out of its neighbourhood (local adaptive threshold): ``threshold`` times the
      reference level of the ``window`` frames on either side (see :func:`_reference`) -- or, under
      heavy motion, at least half that while the colour histogram also jumps by ``hist_jump`` and
      stands out likewise, which motion hardly ever causes;
    * persists: no frame of t..t+2 looks like a frame of t-3..t-1 (``persist`` at least
      ``flash_ratio`` of the jump); otherwise the picture came back (a flash, a corrupt frame).
    """
    n = len(s.d1)
    cuts: list[int] = []
    score = s.d1 + s.c1
    for t in np.flatnonzero(score >= min_diff):
        t = int(t)
        if t == 0:
            continue
        ratio = score[t] / max(_reference(score, t, window), 1e-3)
        if ratio < threshold:
            hist_ratio = s.h1[t] / max(_reference(s.h1, t, window), 0.02)
            if not (
                ratio >= threshold / 2 and s.h1[t] >= hist_jump and hist_ratio >= 2 * threshold
            ):
                continue
        if t + 2 < n and s.persist[t] < flash_ratio * s.d1[t]:
            continue
        cuts.append(t)
    return cuts


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) of the runs of True in a boolean array."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _find_dissolves(
    s: _Series, cuts: list[int], min_gap: float, max_resid: float, peak_ratio: float
) -> list[int]:
    """Centres of dissolves: windows whose middle frame is the average of their ends (module doc).

    Smooth camera motion over smooth pictures can pass the linearity test as well, but it goes on:
    the picture keeps changing before and after. A transition is short, so the change across its
    window (in pixels or, more telling under motion, in colour histogram) must clearly exceed the
    change across the windows just before and after it.
    """
    n = len(s.d1)
    ok = (s.mid_gap >= min_gap) & (s.mid_resid <= max_resid * s.mid_gap)
    ok[:_K] = False
    ok[max(0, n - _K) :] = False
    out: list[int] = []
    cut_arr = np.asarray(cuts, dtype=np.int64)
    for a, b in _runs(ok):
        if b - a + 1 < 3:
            continue  # a real dissolve passes the test over several consecutive windows
        centre = int(a + np.argmax(s.mid_gap[a : b + 1] - 2 * s.mid_resid[a : b + 1]))
        if cut_arr.size and np.min(np.abs(cut_arr - centre)) <= 2 * _K:
            continue  # the change across the window is a cut, not a gradual transition
        sides = [c for c in (centre - 2 * _K, centre + 2 * _K) if _K <= c < n - _K]
        if sides:
            gap_peak = s.mid_gap[centre] / max(float(s.mid_gap[sides].max()), 1e-3)
            hist_peak = s.mid_hist[centre] / max(float(s.mid_hist[sides].max()), 0.02)
            if gap_peak < peak_ratio and hist_peak < 2 * peak_ratio:
                continue
        out.append(centre)
    return out


def _find_fades(
    s: _Series, cuts: list[int], flat: float, depth: float, rise: float
) -> list[tuple[int, int, int]]:
    """Fades through a flat colour (black, white): a contrast dip between two shots.

    Returns (boundary, first, last): the middle of the flat frames and the extent of the fade.

    A dip is a local minimum of the contrast (std of grey levels) below ``flat``. Around it the
    contrast must rise steadily on both sides to at least ``depth`` times the bottom and ``rise``
    grey levels above it — a fade out and a fade in. A dim, misty shot whose contrast merely hovers
    at a low level does not rise like that, and a dip whose slope contains a hard cut is a cut to or
    from a flat picture, which the cut already marks.
    """
    c = s.contrast
    n = len(c)
    cut_arr = np.asarray(cuts, dtype=np.int64)
    out: list[tuple[int, int, int]] = []
    if n < 3:
        return out
    padded = np.pad(c, _K, constant_values=np.inf)
    local_min = np.lib.stride_tricks.sliding_window_view(padded, 2 * _K + 1).min(axis=1)
    done = 0  # frames before this index belong to a dip already handled
    for t in np.flatnonzero((c < flat) & (c <= local_min)):
        t = int(t)
        if t < done or t == 0 or t == n - 1:
            continue
        bottom = float(c[t])
        # The plateau of near-flat frames around the minimum (a fade may hold black for a while).
        a = t
        while a > 0 and c[a - 1] <= bottom + 1.0:
            a -= 1
        b = t
        while b < n - 1 and c[b + 1] <= bottom + 1.0:
            b += 1
        # Walk up both slopes while the contrast keeps increasing.
        left = a
        while left > 0 and c[left - 1] > c[left]:
            left -= 1
        right = b
        while right < n - 1 and c[right + 1] > c[right]:
            right += 1
        done = b + 1
        if left == 0 or right == n - 1:
            continue  # a fade-in at the start or a fade-out at the end: no boundary
        top = min(float(c[left]), float(c[right]))
        if top < depth * bottom or top - bottom < rise:
            continue
        if cut_arr.size and np.any((cut_arr >= left) & (cut_arr <= right + 1)):
            continue
        out.append(((a + b + 1) // 2, left, right))
    return out


def _merge(boundaries: list[int], cuts: set[int], min_len: int) -> list[int]:
    """Drop boundaries closer than ``min_len`` frames to a previous one, hard cuts winning ties."""
    merged: list[int] = []
    for b in sorted(set(boundaries)):
        if merged and b - merged[-1] < min_len:
            if b in cuts and merged[-1] not in cuts:
                merged[-1] = b
            continue
        merged.append(b)
    return merged


def detect_shots(
    path: str | os.PathLike[str],
    *,
    threshold: float = 3.0,
    min_diff: float = 10.0,
    gradual: bool = True,
    min_shot_frames: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress_every: int = 250,
) -> tuple[VideoInfo, list[tuple[int, int]]]:
    """Split a video into shots; return its info and inclusive (start, end) frame ranges.

    The shots cover every decoded frame exactly once. ``threshold`` is how many times a cut's jump
    must exceed the level of the other frame differences nearby (see :func:`_find_cuts`);
    ``min_diff`` the smallest jump (grey levels on 0-255, luma plus chroma) that can be a cut.
    ``gradual`` also looks for dissolves and fades; a gradual transition is split in its middle.
    Boundaries closer than ``min_shot_frames`` are merged.

    ``on_progress(frames_done, n_frames)`` is called every ``progress_every`` frames (``n_frames``
    is the probed estimate), ``should_stop()`` is polled as often and raises
    :class:`DetectionCancelled` when it returns True. Raises :class:`VideoError` for files that are
    not usable videos.
    """
    name = os.path.basename(os.fspath(path))
    info = probe_video(path)
    container, stream = _open(path)
    try:
        stream.thread_type = "AUTO"
        # Deblocking changes pixels by a few grey levels and costs a fifth of the decode time; the
        # "fast" flag allows further shortcuts. Neither changes which frames belong together.
        stream.codec_context.options = {"skip_loop_filter": "all", "flags2": "+fast"}
        series, n = _measure(
            _decoded_frames(container, stream, name),
            info.width,
            info.height,
            info.n_frames,
            min_diff,
            on_progress,
            should_stop,
            max(1, progress_every),
        )
    finally:
        container.close()
    if n == 0:
        raise VideoError(f"{name}: the video has no decodable frames")
    # Duration from the decoded count: container durations are unreliable for some formats
    # (MPEG program streams), and shot times are computed from frame / fps anyway.
    info = VideoInfo(
        fps=info.fps,
        n_frames=n,
        duration_ms=round(n * 1000 / info.fps),
        width=info.width,
        height=info.height,
    )
    if on_progress is not None:
        on_progress(n, n)

    cuts = _find_cuts(
        series, threshold=threshold, min_diff=min_diff, flash_ratio=0.4, window=6, hist_jump=0.3
    )
    boundaries = list(cuts)
    if gradual:
        fades = _find_fades(series, cuts, flat=6.0, depth=3.0, rise=4.0)
        dissolves = _find_dissolves(series, cuts, min_gap=10.0, max_resid=0.25, peak_ratio=1.5)
        # Each half of a fade through black is itself a dissolve (to or from black): keep the fade.
        boundaries += [b for b, _, _ in fades]
        boundaries += [
            d for d in dissolves if not any(lo - 2 <= d <= hi + 2 for _, lo, hi in fades)
        ]
    starts = [b for b in _merge(boundaries, set(cuts), min_shot_frames) if 0 < b < n]
    starts = [0, *starts]
    shots = [(a, b - 1) for a, b in zip(starts, [*starts[1:], n], strict=True)]
    return info, shots


# --------------------------------------------------------------------------------------------------
# Keyframes


def keyframe_indices(start: int, end: int, k: int = 5) -> list[int]:
    """Up to ``k`` frame indices spread evenly over the inclusive shot [start, end].

    The shot is cut into ``min(k, length)`` equal segments and the centre of each is taken. Centres
    rather than the first/last frame (thesis section 6.1.2 uses first, last and three between)
    because shot edges often hold the tail of a gradual transition; section 6.2.1's "maximum of five
    equally distributed keyframes (depending on the length of the shot)" is what this implements.
    """
    if end < start:
        raise ValueError(f"empty shot: start {start} > end {end}")
    length = end - start + 1
    m = min(max(k, 0), length)
    return [start + ((2 * i + 1) * length) // (2 * m) for i in range(m)]


def extract_frames(
    path: str | os.PathLike[str], indices: Iterable[int]
) -> Iterator[tuple[int, Image.Image]]:
    """Yield ``(index, RGB image)`` for the requested frames in ascending order, in one pass.

    Decoding stops after the last requested frame. Indices past the end of the video are skipped;
    duplicates are yielded once. Raises :class:`VideoError` (when iteration starts) for unusable
    files. Uses the numbering of :func:`detect_shots` (decoded frames in presentation order), which
    seeking could not guarantee for every container.
    """
    wanted = sorted(set(int(i) for i in indices))
    if wanted and wanted[0] < 0:
        raise ValueError("frame indices must be >= 0")
    if not wanted:
        return
    name = os.path.basename(os.fspath(path))
    container, stream = _open(path)
    try:
        stream.thread_type = "AUTO"
        pos = 0
        index = -1
        for index, frame in enumerate(_decoded_frames(container, stream, name)):
            if index == wanted[pos]:
                yield index, frame.to_image()
                pos += 1
                if pos == len(wanted):
                    break
        if index < 0:
            raise VideoError(f"{name}: the video has no decodable frames")
    finally:
        container.close()
