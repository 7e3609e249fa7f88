"""Shot boundary detection, keyframes and frame extraction on synthetic videos with known cuts.

No database and no Django needed: ``python -m pytest -p no:django tests/test_shots.py``.
"""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from viva.benchmarks import shots as bench
from viva.ingest.shots import (
    DetectionCancelled,
    VideoError,
    detect_shots,
    extract_frames,
    keyframe_indices,
    probe_video,
)
from viva.ingest.synth import N_VARIANTS, SceneSpec, SyntheticTruth, make_synthetic_video

SIZE = (320, 180)  # small frames keep the suite fast; the detector works on thumbnails anyway


@pytest.fixture(scope="module")
def cuts_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticTruth]:
    """Eight scenes with camera motion joined by hard cuts only."""
    path = tmp_path_factory.mktemp("shots") / "cuts.mp4"
    scenes = [
        SceneSpec(variant=v, n_frames=n, pan=pan, zoom=zoom, monochrome=mono)
        for v, n, pan, zoom, mono in [
            (0, 30, (0.1, 0.0), (1.0, 1.0), False),
            (5, 22, (0.0, 0.1), (1.0, 1.1), False),
            (23, 35, (-0.2, 0.1), (1.0, 1.0), True),
            (8, 18, (0.0, 0.0), (1.1, 1.0), False),
            (46, 28, (0.3, 0.0), (1.0, 1.0), True),
            (13, 25, (0.05, 0.05), (1.0, 1.0), False),
            (30, 20, (0.0, -0.2), (1.0, 1.15), False),
            (3, 26, (0.1, 0.1), (1.0, 1.0), False),
        ]
    ]
    return path, make_synthetic_video(path, scenes, size=SIZE, seed=1)


@pytest.fixture(scope="module")
def gradual_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticTruth]:
    """Hard cuts mixed with dissolves and fades through black."""
    path = tmp_path_factory.mktemp("shots") / "gradual.mp4"
    scenes = [
        SceneSpec(0, 30, pan=(0.1, 0.0)),
        SceneSpec(7, 30, transition="dissolve", transition_frames=12),
        SceneSpec(20, 25, pan=(0.0, 0.1)),
        SceneSpec(11, 30, transition="fade", transition_frames=14, zoom=(1.0, 1.1)),
        SceneSpec(40, 25, transition="dissolve", transition_frames=15, pan=(-0.1, 0.0)),
        SceneSpec(2, 25),
        SceneSpec(60, 30, transition="fade", transition_frames=10),
    ]
    return path, make_synthetic_video(path, scenes, size=SIZE, seed=2)


def _starts(shots: list[tuple[int, int]]) -> list[int]:
    return [start for start, _ in shots[1:]]


def _assert_partition(shots: list[tuple[int, int]], n_frames: int) -> None:
    assert shots[0][0] == 0
    assert shots[-1][1] == n_frames - 1
    for (_, end), (start, _) in zip(shots, shots[1:], strict=False):
        assert start == end + 1
    assert all(start <= end for start, end in shots)


# ------------------------------------------------------------------------------------------------
# Synthetic videos


def test_synthetic_truth_is_consistent(gradual_video: tuple[Path, SyntheticTruth]) -> None:
    path, truth = gradual_video
    _assert_partition(truth.shots, truth.n_frames)
    assert len(truth.shots) == 1 + len(truth.hard_cuts) + len(truth.fades)
    assert len(truth.hard_cuts) == 2 and len(truth.fades) == 4
    for start, end in truth.fades:
        assert 10 <= end - start + 1 <= 15
    info = probe_video(path)
    assert (info.width, info.height, info.n_frames) == (*SIZE, truth.n_frames)
    assert info.fps == pytest.approx(25.0)
    assert info.duration_ms == pytest.approx(truth.n_frames * 40, abs=40)


def test_synthetic_frames_move_but_stay_similar(cuts_video: tuple[Path, SyntheticTruth]) -> None:
    path, truth = cuts_video
    with av.open(str(path)) as container:
        grey = [f.to_ndarray(format="gray").astype(np.float32) for f in container.decode(video=0)]
    first_shot = range(truth.shots[0][0] + 1, truth.shots[0][1] + 1)
    steps = [np.abs(grey[i] - grey[i - 1]).mean() for i in first_shot]
    assert min(steps) > 0.2  # noise and camera motion: no two frames are identical
    assert max(steps) < 15  # ... but a shot stays one shot
    cut = truth.hard_cuts[0]
    assert np.abs(grey[cut] - grey[cut - 1]).mean() > 3 * max(steps)


def test_synthetic_variants_look_different() -> None:
    from viva.ingest.synth import variant_image

    assert N_VARIANTS >= 40
    small = [cv2.resize(variant_image(v), (32, 32)).astype(np.float32) for v in range(N_VARIANTS)]
    for i in range(N_VARIANTS):
        for j in range(i + 1, N_VARIANTS):
            assert np.abs(small[i] - small[j]).mean() > 3, (i, j)


# ------------------------------------------------------------------------------------------------
# Detection


def test_detects_hard_cuts_exactly(cuts_video: tuple[Path, SyntheticTruth]) -> None:
    path, truth = cuts_video
    info, shots = detect_shots(path)
    assert info.n_frames == truth.n_frames
    _assert_partition(shots, truth.n_frames)
    found = _starts(shots)
    assert len(found) == len(truth.hard_cuts)
    for got, want in zip(found, truth.hard_cuts, strict=True):
        assert abs(got - want) <= 1


def test_gradual_transitions_do_not_cause_false_cuts(
    gradual_video: tuple[Path, SyntheticTruth],
) -> None:
    path, truth = gradual_video
    info, shots = detect_shots(path)
    _assert_partition(shots, info.n_frames)
    counts = bench.score(truth, _starts(shots))
    assert counts["tp"] == len(truth.hard_cuts) and counts["fn"] == 0
    assert counts["fp"] == 0
    # At most one boundary per transition, and every transition found.
    for start, end in truth.fades:
        inside = [b for b in _starts(shots) if start - 1 <= b <= end + 2]
        assert len(inside) == 1, (start, end, _starts(shots))


def test_hard_cuts_only_mode_ignores_fades(gradual_video: tuple[Path, SyntheticTruth]) -> None:
    path, truth = gradual_video
    _, shots = detect_shots(path, gradual=False)
    counts = bench.score(truth, _starts(shots))
    assert counts["tp"] == len(truth.hard_cuts) and counts["fp"] == 0
    assert len(_starts(shots)) <= len(truth.hard_cuts) + len(truth.fades)


def test_flashes_are_not_cuts(tmp_path: Path) -> None:
    flashes = {20, 21, 55, 90}

    def flash(index: int, rgb: np.ndarray) -> np.ndarray:
        return cv2.convertScaleAbs(rgb, alpha=1.0, beta=120) if index in flashes else rgb

    path = tmp_path / "flash.mp4"
    scenes = [SceneSpec(3, 45, pan=(0.1, 0.0)), SceneSpec(10, 60, zoom=(1.0, 1.1))]
    truth = make_synthetic_video(path, scenes, size=SIZE, frame_hook=flash)
    _, shots = detect_shots(path)
    assert _starts(shots) == truth.hard_cuts


def test_short_shots_of_a_montage(tmp_path: Path) -> None:
    path = tmp_path / "montage.mp4"
    lengths = [9, 6, 8, 5, 12, 7, 10]
    scenes = [SceneSpec(v * 7 % N_VARIANTS, n) for v, n in enumerate(lengths)]
    truth = make_synthetic_video(path, scenes, size=SIZE)
    _, shots = detect_shots(path)
    assert bench.score(truth, _starts(shots))["fn"] == 0
    assert bench.score(truth, _starts(shots))["fp"] == 0


def test_progress_and_cancel(cuts_video: tuple[Path, SyntheticTruth]) -> None:
    path, truth = cuts_video
    calls: list[tuple[int, int]] = []
    detect_shots(
        path, on_progress=lambda done, total: calls.append((done, total)), progress_every=50
    )
    assert calls[-1] == (truth.n_frames, truth.n_frames)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert len(calls) == truth.n_frames // 50 + 1
    with pytest.raises(DetectionCancelled):
        detect_shots(path, should_stop=lambda: True, progress_every=10)


# ------------------------------------------------------------------------------------------------
# Keyframes and extraction


@pytest.mark.parametrize("length", [*range(1, 13), 24, 25, 26, 99, 1000])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_keyframe_indices(length: int, k: int) -> None:
    start = 100
    end = start + length - 1
    idx = keyframe_indices(start, end, k)
    assert len(idx) == min(k, length)
    assert idx == sorted(set(idx))
    assert all(start <= i <= end for i in idx)
    # Evenly spread: each keyframe sits in its own equal segment, gaps differ by at most one.
    inner = np.diff(idx)
    if inner.size:
        assert inner.max() - inner.min() <= 1
    # ... and the margins before the first and after the last are about half a gap each.
    segment = length / len(idx)
    assert idx[0] - start == pytest.approx(segment / 2, abs=1)
    assert end - idx[-1] == pytest.approx(segment / 2, abs=1)


def test_keyframe_indices_defaults_and_errors() -> None:
    assert keyframe_indices(0, 99) == [10, 30, 50, 70, 90]
    assert keyframe_indices(7, 7) == [7]
    assert keyframe_indices(0, 9, k=0) == []
    with pytest.raises(ValueError):
        keyframe_indices(5, 4)


def test_extract_frames_matches_sequential_decode(cuts_video: tuple[Path, SyntheticTruth]) -> None:
    path, truth = cuts_video
    with av.open(str(path)) as container:
        reference = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(reference) == truth.n_frames
    wanted = [truth.n_frames - 1, 0, 29, 30, 30, 101, 10_000]
    got = list(extract_frames(path, wanted))
    assert [i for i, _ in got] == [0, 29, 30, 101, truth.n_frames - 1]
    for index, image in got:
        assert image.mode == "RGB" and image.size == SIZE
        assert np.array_equal(np.asarray(image), reference[index])
    assert list(extract_frames(path, [])) == []
    with pytest.raises(ValueError):
        list(extract_frames(path, [-1]))


# ------------------------------------------------------------------------------------------------
# Bad files


def _zero_frame_avi(path: Path) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()


def _audio_only(path: Path) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("notes.mp4", lambda p: p.write_text("not a video\n" * 50), "not a readable video"),
        ("empty.mp4", lambda p: p.write_bytes(b""), "empty"),
        ("noise.mp4", lambda p: p.write_bytes(np.random.default_rng(0).bytes(50_000)), ""),
        ("zero.avi", _zero_frame_avi, "no decodable frames"),
        ("sound.wav", _audio_only, "no video stream"),
        ("still.png", lambda p: cv2.imwrite(str(p), np.zeros((32, 32, 3), np.uint8)), "image"),
        ("missing.mp4", lambda p: None, "not found"),
    ],
)
def test_bad_files_raise_video_error(tmp_path: Path, name: str, make, message: str) -> None:
    path = tmp_path / name
    make(path)
    for call in (probe_video, detect_shots, lambda p: list(extract_frames(p, [0]))):
        with pytest.raises(VideoError) as err:
            call(path)
        text = str(err.value)
        assert text.startswith(name + ":") and message in text
        assert "\n" not in text and len(text) < 200


def test_truncated_video_raises_video_error(
    tmp_path: Path, cuts_video: tuple[Path, SyntheticTruth]
) -> None:
    data = cuts_video[0].read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])  # the mp4 index (moov) is at the end: now missing
    with pytest.raises(VideoError, match="truncated.mp4: not a readable video"):
        detect_shots(path)


# ------------------------------------------------------------------------------------------------
# Benchmark plumbing


def test_benchmark_scoring_rules() -> None:
    truth = SyntheticTruth(fps=25, n_frames=200, width=64, height=36)
    truth.hard_cuts = [20, 50, 100]
    truth.fades = [(140, 151)]
    counts = bench.score(truth, [21, 49, 51, 139, 146, 190])
    # 21 and 49 match (within one frame), 51 is a second detection of 50 -> FP, 139 and 146 lie in
    # the widened fade (ignored, fade found), 190 is FP, 100 missed.
    assert counts == {"tp": 2, "fp": 2, "fn": 1, "fades": 1, "fades_found": 1}


def test_benchmark_smoke() -> None:
    result = bench.run(minutes=0.12, seed=3, videos=1, repeat=1)
    for key in (
        "name",
        "f1",
        "precision",
        "recall",
        "fps",
        "baseline_f1",
        "baseline_fps",
        "ratio",
        "fade_recall",
    ):
        assert key in result
    assert result["name"] == "shots"
    assert result["f1"] >= 0.95
    assert bench.table(result)
