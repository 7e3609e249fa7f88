"""``bench shots``: our shot boundary detector against PySceneDetect's ContentDetector.

Both detectors run on the same freshly written synthetic videos (:mod:`viva.ingest.synth`: pan/zoom
camera, sensor noise, colour and black-and-white scenes, hard cuts and gradual transitions) whose
ground truth is exact. DESIGN.md section 7 fixes the keys of the result; the target is hard-cut
F1 >= 0.95, not below PySceneDetect's, at no lower speed.

Scoring of hard cuts:

* a detected boundary (first frame of a new shot) matches a true hard cut when it is within +-1
  frame; matching is one-to-one (cuts are at least 15 frames apart, so greedy matching is optimal);
* a detected boundary inside a gradual transition (from its first mixed frame - 1 to its last mixed
  frame + 2, i.e. the transition widened by the same +-1 tolerance) counts neither as a true nor as
  a false positive: where to put the boundary of a fade is a matter of convention;
* every other detected boundary is a false positive, every unmatched true cut a false negative.

``fade_recall`` is the share of gradual transitions with at least one detected boundary inside that
widened range.

Speed: frames per second of wall-clock time of the whole call (open, decode, analyse) for each
detector, files already in the page cache. Other processes share the machine, so each detector runs
``repeat`` times per video (interleaved, alternating which goes first) and the fastest run counts,
for both alike. ``cpu_fps`` counts frames per CPU second of the process (all decoder threads
included): on a busy machine it is the steadier measure of the work each detector does.

No Django imports here: the ``bench`` management command only dispatches to :func:`add_arguments`
and :func:`run`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from viva.ingest import shots as our_shots
from viva.ingest.synth import SceneSpec, SyntheticTruth, make_synthetic_video, random_scenes

NAME = "shots"
FPS = 25
SIZE = (640, 360)
SCENE_SECONDS = (1.0, 6.0)
FADE_EVERY = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``manage.py bench shots``."""
    parser.add_argument(
        "--minutes", type=float, default=3.5, help="total synthetic footage (default 3.5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic videos")
    parser.add_argument(
        "--videos", type=int, default=4, help="number of files the footage is split into"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed runs per detector and video; fastest counts"
    )


def _scenes_for(seconds: float, seed: int) -> list[SceneSpec]:
    """Random scenes (hard cuts, every FADE_EVERY-th transition gradual) filling ``seconds``."""
    pool = random_scenes(
        max(4, int(seconds / SCENE_SECONDS[0]) + 2),
        fps=FPS,
        fade_every=FADE_EVERY,
        seed=seed,
        scene_seconds=SCENE_SECONDS,
    )
    target = round(seconds * FPS)
    out: list[SceneSpec] = []
    total = 0
    for spec in pool:
        out.append(spec)
        total += spec.n_frames + (spec.transition_frames if spec.transition != "cut" else 0)
        if total >= target:
            break
    return out


def score(truth: SyntheticTruth, boundaries: Sequence[int], tolerance: int = 1) -> dict[str, int]:
    """Hard-cut true/false positives and misses, and gradual transitions found (module doc)."""
    fade_ranges = [(s - tolerance, e + 1 + tolerance) for s, e in truth.fades]
    unmatched = sorted(truth.hard_cuts)
    tp = fp = 0
    fades_hit = [False] * len(fade_ranges)
    for b in sorted(boundaries):
        match = next((c for c in unmatched if abs(c - b) <= tolerance), None)
        if match is not None:
            unmatched.remove(match)
            tp += 1
            continue
        inside = [i for i, (lo, hi) in enumerate(fade_ranges) if lo <= b <= hi]
        if inside:
            for i in inside:
                fades_hit[i] = True
            continue
        fp += 1
    return {
        "tp": tp,
        "fp": fp,
        "fn": len(unmatched),
        "fades": len(fade_ranges),
        "fades_found": sum(fades_hit),
    }


def _metrics(counts: dict[str, int]) -> dict[str, float]:
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fade_recall = counts["fades_found"] / counts["fades"] if counts["fades"] else 1.0
    return {"precision": precision, "recall": recall, "f1": f1, "fade_recall": fade_recall}


def ours_boundaries(path: Path) -> list[int]:
    """First frames of every shot but the first, from our detector."""
    _, found = our_shots.detect_shots(path)
    return [start for start, _ in found[1:]]


def baseline_boundaries(path: Path) -> list[int]:
    """First frames of every scene but the first, from PySceneDetect's ContentDetector defaults."""
    from scenedetect import ContentDetector, detect  # noqa: PLC0415 - optional, benchmark only

    scenes = detect(str(path), ContentDetector(), show_progress=False)
    return [start.frame_num for start, _ in scenes[1:]]


def _timed(fn: Callable[[Path], list[int]], path: Path) -> tuple[float, float, list[int]]:
    """Wall-clock and CPU seconds (all threads of this process) of one call, and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(path)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def run(**options: Any) -> dict[str, Any]:
    """Build the videos, run both detectors, return the result dict (keys: DESIGN.md section 7)."""
    minutes = float(options.get("minutes") or 3.5)
    seed = int(options.get("seed") or 0)
    n_videos = max(1, int(options.get("videos") or 4))
    repeat = max(1, int(options.get("repeat") or 3))
    seconds_each = minutes * 60 / n_videos

    detectors: dict[str, Callable[[Path], list[int]]] = {
        "ours": ours_boundaries,
        "baseline": baseline_boundaries,
    }
    totals = {k: {"tp": 0, "fp": 0, "fn": 0, "fades": 0, "fades_found": 0} for k in detectors}
    seconds = dict.fromkeys(detectors, 0.0)
    cpu_seconds = dict.fromkeys(detectors, 0.0)
    n_frames = n_cuts = n_fades = 0
    with tempfile.TemporaryDirectory(prefix="viva-bench-shots-") as tmp:
        videos: list[tuple[Path, SyntheticTruth]] = []
        t0 = time.perf_counter()
        for i in range(n_videos):
            path = Path(tmp) / f"synthetic_{i}.mp4"
            scenes = _scenes_for(seconds_each, seed * 1000 + i)
            truth = make_synthetic_video(path, scenes, fps=FPS, size=SIZE, seed=seed * 1000 + i)
            videos.append((path, truth))
        build_s = time.perf_counter() - t0
        # Warm up both (imports, codec initialisation) on a tiny clip, outside the timed runs.
        warm = Path(tmp) / "warm_up.mp4"
        make_synthetic_video(warm, [SceneSpec(0, 12), SceneSpec(5, 12)], size=(160, 90))
        for fn in detectors.values():
            fn(warm)
        for path, truth in videos:
            n_frames += truth.n_frames
            n_cuts += len(truth.hard_cuts)
            n_fades += len(truth.fades)
            best = dict.fromkeys(detectors, float("inf"))
            best_cpu = dict.fromkeys(detectors, float("inf"))
            found: dict[str, list[int]] = {}
            for r in range(repeat):
                order = list(detectors) if r % 2 == 0 else list(reversed(detectors))
                for key in order:
                    elapsed, cpu, found[key] = _timed(detectors[key], path)
                    best[key] = min(best[key], elapsed)
                    best_cpu[key] = min(best_cpu[key], cpu)
            for key in detectors:
                seconds[key] += best[key]
                cpu_seconds[key] += best_cpu[key]
                for k, v in score(truth, found[key]).items():
                    totals[key][k] += v

    ours, base = _metrics(totals["ours"]), _metrics(totals["baseline"])
    fps = n_frames / seconds["ours"]
    baseline_fps = n_frames / seconds["baseline"]
    return {
        "name": NAME,
        "ours": round(fps, 1),
        "baseline": round(baseline_fps, 1),
        "ratio": round(fps / baseline_fps, 3),
        "f1": round(ours["f1"], 4),
        "precision": round(ours["precision"], 4),
        "recall": round(ours["recall"], 4),
        "fps": round(fps, 1),
        "fade_recall": round(ours["fade_recall"], 4),
        "baseline_f1": round(base["f1"], 4),
        "baseline_precision": round(base["precision"], 4),
        "baseline_recall": round(base["recall"], 4),
        "baseline_fps": round(baseline_fps, 1),
        "baseline_fade_recall": round(base["fade_recall"], 4),
        "cpu_fps": round(n_frames / cpu_seconds["ours"], 1),
        "baseline_cpu_fps": round(n_frames / cpu_seconds["baseline"], 1),
        "cpu_ratio": round(cpu_seconds["baseline"] / cpu_seconds["ours"], 3),
        "videos": n_videos,
        "frames": n_frames,
        "minutes": round(n_frames / FPS / 60, 2),
        "hard_cuts": n_cuts,
        "fades": n_fades,
        "counts": totals,
        "seed": seed,
        "repeat": repeat,
        "build_seconds": round(build_s, 1),
        "baseline_name": "PySceneDetect ContentDetector (defaults, OpenCV backend)",
    }


def table(result: dict[str, Any]) -> str:
    """A short human-readable table of a :func:`run` result."""
    rows = [
        ("", "ours", "PySceneDetect"),
        ("precision", f"{result['precision']:.3f}", f"{result['baseline_precision']:.3f}"),
        ("recall", f"{result['recall']:.3f}", f"{result['baseline_recall']:.3f}"),
        ("F1 (hard cuts)", f"{result['f1']:.3f}", f"{result['baseline_f1']:.3f}"),
        ("fade recall", f"{result['fade_recall']:.3f}", f"{result['baseline_fade_recall']:.3f}"),
        ("frames/s", f"{result['fps']:.0f}", f"{result['baseline_fps']:.0f}"),
        ("frames/CPU-s", f"{result['cpu_fps']:.0f}", f"{result['baseline_cpu_fps']:.0f}"),
    ]
    head = (
        f"{result['frames']} frames ({result['minutes']} min), {result['hard_cuts']} hard cuts, "
        f"{result['fades']} gradual transitions, speed ratio {result['ratio']:.2f}"
    )
    return "\n".join([head, *(f"{a:<16}{b:>10}{c:>16}" for a, b, c in rows)])
