"""Export of retrieval results as video segments, and of the labelled dataset.

**Segments** (as in the original VIVA's export, which merged consecutive keyframes):
a keyframe stands for the part of its shot around it — from the midpoint to the
previous keyframe of the shot (or the shot's start) to the midpoint to the next one (or
the shot's end). Consecutive keyframes of one shot that all score at or above the
threshold become one segment from the first one's start to the last one's end; a
keyframe below the threshold (or without a stored prediction, i.e. below the run's score
floor) splits it. The segment's score is the maximum of its keyframes. With
``merge_shots`` (default on) segments of adjacent shots are merged too when the gap
between them is at most one frame (``ceil(1000 / fps)`` ms): the importer's shots touch
(``end_ms`` is the start of the next shot's first frame), and data where ``end_ms`` is the
time of the shot's last frame leaves exactly one frame between shots. Keyframes without a shot are
zero-length segments at their time and merge under the same gap rule.

Output: a zip with ``segments.csv`` (all videos), ``segments.json`` (grouped by video)
and ``videos/<video id>.csv`` (one CSV per video, like the original). Columns:
category, video id, video title, start ms, duration ms, max score, keyframes.
Exports of a *person* add ``faces.csv``: per keyframe hit the recognised face and its
box in keyframe pixels (:data:`FACE_COLUMNS`), so a user can find the person in the frame.

**Dataset**: ``annotations.csv`` (one row per label), ``dataset.json`` (categories and
images with their labels) and, optionally, the image files under ``images/``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

__all__ = [
    "DEFAULT_THRESHOLDS",
    "KeyframeRow",
    "default_threshold",
    "Segment",
    "export_dir",
    "segments_of_video",
    "write_segments_zip",
]

# Default thresholds of the original VIVA: 70 % for concepts, 80 % for persons. A person
# export defaults to the person model's rejection threshold instead when a person run is
# published (:func:`default_threshold`), like the ranked and persons pages.
DEFAULT_THRESHOLDS = {"concept": 0.7, "person": 0.8}


def default_threshold(kind: str) -> float:
    """The export threshold a form starts with for a ``kind`` ("concept" / "person"):
    for persons the published person run's ``score_floor`` (the rejection threshold its
    faces were accepted with) when there is one, else :data:`DEFAULT_THRESHOLDS`."""
    if kind == "person":
        from .ranking import published_run  # lazily: this module is imported by jobs

        run = published_run("person")
        if run is not None:
            return float(run.score_floor)
    return DEFAULT_THRESHOLDS.get(kind, DEFAULT_THRESHOLDS["concept"])


SEGMENT_COLUMNS = [
    "category",
    "video_id",
    "video_title",
    "start_ms",
    "duration_ms",
    "max_score",
    "keyframes",
]


def export_dir(job_id: int, *, create: bool = True) -> Path:
    """Where a job's export files live (outside MEDIA_ROOT: downloads are checked)."""
    path = Path(settings.VAR_DIR) / "exports" / f"job-{job_id}"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class KeyframeRow:
    image_id: int
    shot_id: int | None
    time_ms: int


@dataclass
class Segment:
    start_ms: int
    end_ms: int
    max_score: float
    keyframes: int = 1
    shot_ids: list[int] = field(default_factory=list)

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


FACE_COLUMNS = ["image_id", "video_id", "time_ms", "face_id", "x1", "y1", "x2", "y2", "score"]


def faces_csv(rows: Iterable[dict]) -> str:
    """``faces.csv`` of a person export: one row per keyframe hit with its face box."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(FACE_COLUMNS)
    for row in rows:
        box = list(row.get("box") or [None] * 4)[:4]
        writer.writerow(
            [row["image_id"], row.get("video_id"), row.get("time_ms"), row["face_id"], *box]
            + [round(float(row["score"]), 4)]
        )
    return out.getvalue()


def frame_gap_ms(fps: float | None) -> int:
    return math.ceil(1000 / fps) if fps and fps > 0 else 40


def segments_of_video(
    shots: dict[int, tuple[int, int]],
    keyframes: Iterable[KeyframeRow],
    scores: dict[int, float],
    *,
    merge_shots: bool = True,
    gap_ms: int = 40,
) -> list[Segment]:
    """Segments of one video (see the module docstring).

    ``shots`` maps shot id → (start_ms, end_ms) for the shots that have hits;
    ``keyframes`` are all keyframes of those shots plus the shotless hits;
    ``scores`` maps the hit image ids (score ≥ threshold) to their scores.
    """
    by_shot: dict[int | None, list[KeyframeRow]] = defaultdict(list)
    for kf in keyframes:
        by_shot[kf.shot_id].append(kf)
    segments: list[Segment] = []
    for shot_id, (start, end) in shots.items():
        frames = sorted(by_shot.get(shot_id, []), key=lambda k: (k.time_ms, k.image_id))
        if not frames:
            continue
        bounds = [start]
        bounds += [(a.time_ms + b.time_ms) // 2 for a, b in zip(frames, frames[1:], strict=False)]
        bounds.append(end)
        current: Segment | None = None
        for i, kf in enumerate(frames):
            score = scores.get(kf.image_id)
            if score is None:
                current = None
                continue
            lo, hi = max(start, bounds[i]), min(end, bounds[i + 1])
            if current is None:
                current = Segment(lo, hi, score, 1, [shot_id])
                segments.append(current)
            else:
                current.end_ms = hi
                current.max_score = max(current.max_score, score)
                current.keyframes += 1
    for kf in by_shot.get(None, []):
        if kf.image_id in scores:
            segments.append(Segment(kf.time_ms, kf.time_ms, scores[kf.image_id], 1, []))
    segments.sort(key=lambda s: (s.start_ms, s.end_ms))
    if not merge_shots:
        return segments
    merged: list[Segment] = []
    for seg in segments:
        last = merged[-1] if merged else None
        if last is not None and seg.start_ms - last.end_ms <= gap_ms:
            last.end_ms = max(last.end_ms, seg.end_ms)
            last.max_score = max(last.max_score, seg.max_score)
            last.keyframes += seg.keyframes
            last.shot_ids += [s for s in seg.shot_ids if s not in last.shot_ids]
        else:
            merged.append(seg)
    return merged


@dataclass
class VideoSegments:
    video_id: int
    title: str
    segments: list[Segment]


def _segment_row(label: str, video: VideoSegments, seg: Segment) -> list:
    return [
        label,
        video.video_id,
        video.title,
        seg.start_ms,
        seg.duration_ms,
        round(seg.max_score, 4),
        seg.keyframes,
    ]


def write_segments_zip(
    path: Path,
    label: str,
    videos: Iterable[VideoSegments],
    *,
    meta: dict,
    extra_files: dict[str, str] | None = None,
) -> int:
    """Write the segments zip atomically (temporary file, then rename); return the count.
    ``extra_files`` (name → text) are added as they are (``faces.csv`` of persons)."""
    tmp = path.with_suffix(".part")
    count = 0
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        all_csv = io.StringIO()
        writer = csv.writer(all_csv)
        writer.writerow(SEGMENT_COLUMNS)
        json_videos = []
        for video in videos:
            one = io.StringIO()
            one_writer = csv.writer(one)
            one_writer.writerow(SEGMENT_COLUMNS)
            for seg in video.segments:
                row = _segment_row(label, video, seg)
                writer.writerow(row)
                one_writer.writerow(row)
                count += 1
            zf.writestr(f"videos/{video.video_id}.csv", one.getvalue())
            json_videos.append(
                {
                    "video_id": video.video_id,
                    "title": video.title,
                    "segments": [
                        {
                            "start_ms": s.start_ms,
                            "duration_ms": s.duration_ms,
                            "max_score": round(s.max_score, 4),
                            "keyframes": s.keyframes,
                        }
                        for s in video.segments
                    ],
                }
            )
        for name, text in (extra_files or {}).items():
            zf.writestr(name, text)
        zf.writestr("segments.csv", all_csv.getvalue())
        zf.writestr(
            "segments.json",
            json.dumps({**meta, "category": label, "videos": json_videos}, indent=1),
        )
    os.replace(tmp, path)
    return count


DATASET_COLUMNS = [
    "image_id",
    "face_id",
    "category_id",
    "category",
    "kind",
    "value",
    "label",
    "source",
    "user",
    "updated_at",
    "file",
    "sha256",
    "video_id",
    "video_title",
    "time_ms",
]
LABEL_NAMES = {1: "positive", -1: "negative", 0: "neutral"}


def write_dataset_zip(
    path: Path,
    categories: list[dict],
    rows: Iterable[dict],
    *,
    include_images: bool,
    media_root: Path,
    on_row: Callable[[int], None] | None = None,
    on_missing: Callable[[str], None] | None = None,
) -> dict:
    """Write the dataset zip; ``rows`` are annotation dicts ordered by image id.

    Streams: the CSV and the JSON go to temporary files beside the zip (millions of
    labels never sit in memory) and image files are added as their rows pass by.
    """
    tmp = path.with_suffix(".part")
    csv_tmp, json_tmp = path.with_suffix(".csv.part"), path.with_suffix(".json.part")
    n_rows = n_images = n_files = 0
    media_root = media_root.resolve()
    try:
        with (
            zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf,
            open(csv_tmp, "w", newline="", encoding="utf-8") as table,
            open(json_tmp, "w", encoding="utf-8") as js,
        ):
            writer = csv.writer(table)
            writer.writerow(DATASET_COLUMNS)
            js.write('{"categories": ' + json.dumps(categories, default=str) + ', "images": [\n')
            current: dict | None = None

            def flush(image: dict | None, first: bool) -> None:
                if image is not None:
                    js.write(("" if first else ",\n") + json.dumps(image, default=str))

            for row in rows:
                n_rows += 1
                row = {**row, "label": LABEL_NAMES.get(row["value"], "")}
                writer.writerow(["" if row.get(c) is None else row[c] for c in DATASET_COLUMNS])
                if current is None or current["id"] != row["image_id"]:
                    flush(current, n_images <= 1)
                    current = {
                        "id": row["image_id"],
                        "file": row["file"],
                        "sha256": row["sha256"],
                        "video_id": row["video_id"],
                        "time_ms": row["time_ms"],
                        "labels": [],
                    }
                    n_images += 1
                    if include_images and row["file"]:
                        source = (media_root / row["file"]).resolve()
                        if source.is_relative_to(media_root) and source.is_file():
                            zf.write(source, f"images/{row['file']}")
                            n_files += 1
                        elif on_missing:
                            on_missing(row["file"])
                current["labels"].append(
                    {
                        "category_id": row["category_id"],
                        "face_id": row["face_id"],
                        "value": row["value"],
                        "label": row["label"],
                        "source": row["source"],
                    }
                )
                if on_row:
                    on_row(n_rows)
            flush(current, n_images <= 1)
            js.write("\n]}\n")
            table.flush()
            js.flush()
            zf.write(csv_tmp, "annotations.csv")
            zf.write(json_tmp, "dataset.json")
        os.replace(tmp, path)
    finally:
        for leftover in (csv_tmp, json_tmp, tmp):
            leftover.unlink(missing_ok=True)
    return {"annotations": n_rows, "images": n_images, "files": n_files}
