"""Sequence import: a CSV of video intervals → the keyframes inside them become candidates.

Archivists often already know *where* a concept appears (results of a search in the archive's
own database, a shot list, an editor's notes). A CSV of ``video, start, end[, label]`` turns
that knowledge into labelling work (or directly into labels) without clicking through videos.

Rules:

* columns in this order, or named in a header row (``video``, ``start``, ``end``, ``label``;
  a header is optional and recognised by its names);
* ``video`` is a video id, or its path: the stored media path, the original file name or the
  original path (its last component is enough when it is unique);
* times are whole milliseconds (``83250``) or ``[HH:]MM:SS[.mmm]`` (``00:01:23.250``);
* ``label`` is optional: positive / negative / neutral (also ``1 / -1 / 0``, ``pos``,
  ``neg``, ``+``, ``-``); empty means "just propose for labelling";
* comma, semicolon or tab separated, UTF-8 (a byte order mark is fine).

Frames are computed with each video's own frame rate (the original VIVA assumed 25 fps for
every video, so intervals of 30 fps material drifted by seconds within a few minutes). A file
with any error imports nothing: the user gets every problem with its line number at once and
fixes the file, instead of importing half of it and guessing which half.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from django.db import transaction
from django.db.models import Q

from viva.models import Image, Video

from .acquisition import add_candidates
from .labels import LabelError, parse_value, save_labels
from .models import Category, Source

MAX_BYTES = 20 * 2**20
MAX_ROWS = 200_000
MAX_ERRORS = 200
#: Files with more rows than this are imported by a job instead of inside the web request.
SYNC_ROW_LIMIT = 2000
LABEL_BATCH = 4000

HEADER_NAMES = {
    "video": {"video", "video_id", "videoid", "id", "path", "file", "filename", "video_path"},
    "start": {"start", "start_ms", "begin", "from", "in", "start_time"},
    "end": {"end", "end_ms", "stop", "to", "out", "end_time"},
    "label": {"label", "value", "annotation", "class_label"},
}

_TIME_RE = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[.,](\d{1,6}))?$")
_EXTRA_LABELS = {"+": 1, "-": -1, "yes": 1, "no": -1, "true": 1, "false": -1}

EXAMPLE_CSV = """video,start,end,label
42,00:01:10.000,00:01:25.500,positive
news/1989-11-09_tagesschau.mp4,83250,91000,
1989-11-10_aktuelle_kamera.mp4,00:12:03.120,00:12:09.000,negative
"""


@dataclass(frozen=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"Line {self.line}: {self.message}" if self.line else self.message


class SequenceImportError(Exception):
    """The file was refused; ``errors`` lists every problem with its line number."""

    def __init__(self, errors: list[LineError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors[:5]))


@dataclass(frozen=True)
class Interval:
    line: int
    video_id: int
    start_ms: int
    end_ms: int
    label: int | None


@dataclass
class Plan:
    """A fully validated file: what would be imported."""

    intervals: list[Interval] = field(default_factory=list)
    warnings: list[LineError] = field(default_factory=list)
    n_videos: int = 0

    @property
    def n_rows(self) -> int:
        return len(self.intervals)


@dataclass
class ImportSummary:
    rows: int = 0
    videos: int = 0
    keyframes: int = 0
    new_candidates: int = 0
    labelled: int = 0
    labels_saved: int = 0
    empty_intervals: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "videos": self.videos,
            "keyframes": self.keyframes,
            "new_candidates": self.new_candidates,
            "labelled": self.labelled,
            "labels_saved": self.labels_saved,
            "empty_intervals": self.empty_intervals,
            "warnings": self.warnings[:MAX_ERRORS],
            "summary": (
                f"{self.rows} interval(s) in {self.videos} video(s): {self.keyframes} keyframe(s), "
                f"{self.new_candidates} new candidate(s), {self.labels_saved} label(s) saved."
            ),
        }


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


def parse_time(text: str) -> int:
    """Milliseconds from ``"83250"`` or ``"[HH:]MM:SS[.mmm]"``; ``ValueError`` otherwise."""
    value = text.strip()
    if not value:
        raise ValueError("the time is empty")
    if value.isdigit():
        return int(value)
    match = _TIME_RE.match(value)
    if not match:
        raise ValueError(
            f"“{value[:40]}” is not a time; use whole milliseconds (83250) or "
            "HH:MM:SS.mmm (00:01:23.250)"
        )
    hours, minutes, seconds, fraction = match.groups()
    if int(seconds) >= 60 or (hours is not None and int(minutes) >= 60):
        raise ValueError(f"“{value}” has minutes or seconds of 60 or more")
    ms = (int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)) * 1000
    if fraction:
        ms += round(int(fraction) * 1000 / 10 ** len(fraction))
    return ms


def parse_label(text: str) -> int | None:
    value = text.strip().lower()
    if value in _EXTRA_LABELS:
        return _EXTRA_LABELS[value]
    try:
        return parse_value(value)
    except LabelError:
        raise ValueError(
            f"“{text.strip()[:40]}” is not a label; use positive, negative, neutral "
            "(or 1, -1, 0), or leave it empty"
        ) from None


def decode(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        raise SequenceImportError(
            [LineError(line, "The file is not UTF-8 text. Save it as “CSV UTF-8” and try again.")]
        ) from None


def _delimiter(text: str) -> str:
    """Comma, semicolon (spreadsheets in many European locales) or tab.

    Decided on the first data line by counting, since :class:`csv.Sniffer` is easily misled
    by the colons and dots inside times.
    """
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            counts = {d: line.count(d) for d in (",", ";", "\t")}
            best = max(counts, key=lambda d: (counts[d], d == ","))
            return best if counts[best] else ","
    return ","


def _header_map(cells: list[str]) -> dict[str, int] | None:
    """Column positions if ``cells`` is a header row, else ``None``."""
    names = [c.strip().lower().replace(" ", "_") for c in cells]
    found: dict[str, int] = {}
    for index, name in enumerate(names):
        for column, aliases in HEADER_NAMES.items():
            if name in aliases and column not in found:
                found[column] = index
    if {"video", "start", "end"} <= found.keys():
        return found
    return None


def _looks_like_header(cells: list[str]) -> bool:
    """A first row whose time columns are words is a header we could not read."""
    if len(cells) < 3:
        return False
    try:
        parse_time(cells[1])
        parse_time(cells[2])
    except ValueError:
        return not any(ch.isdigit() for ch in cells[1] + cells[2])
    return False


@dataclass
class _Row:
    line: int
    video_ref: str
    start_ms: int
    end_ms: int
    label: int | None


def read_rows(text: str) -> tuple[list[_Row], list[LineError]]:
    """Parse the CSV syntax, times and labels; videos are resolved later.

    Returns the good rows and the problems, so the caller can report problems with the
    videos of the good rows in the same list (the user fixes everything in one go).
    """
    errors: list[LineError] = []
    rows: list[_Row] = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    columns = {"video": 0, "start": 1, "end": 2, "label": 3}
    first = True
    try:
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                continue  # blank lines and comments
            if first:
                first = False
                header = _header_map(cells)
                if header is not None:
                    columns = {"label": -1, **header}
                    continue
                if _looks_like_header(cells):
                    errors.append(
                        LineError(
                            line,
                            (
                                "This looks like a header, but its columns are not named "
                                "video, start, end (and optionally label)."
                            ),
                        )
                    )
                    continue
            if len(rows) >= MAX_ROWS:
                errors.append(LineError(line, f"More than {MAX_ROWS} rows; split the file."))
                break
            row = _read_row(cells, line, columns, errors)
            if row is not None:
                rows.append(row)
            if len(errors) >= MAX_ERRORS:
                break
    except csv.Error as exc:
        errors.append(LineError(reader.line_num, f"The CSV cannot be read here ({exc})."))
    if not rows and not errors:
        errors.append(LineError(0, "The file contains no rows."))
    return rows, errors


def _read_row(
    cells: list[str], line: int, columns: dict[str, int], errors: list[LineError]
) -> _Row | None:
    needed = max(columns["video"], columns["start"], columns["end"]) + 1
    if len(cells) < needed:
        errors.append(
            LineError(
                line, f"Expected at least {needed} columns (video, start, end), found {len(cells)}."
            )
        )
        return None
    label_col = columns.get("label", -1)
    if label_col < 0 and len(cells) > 4:
        errors.append(
            LineError(
                line, f"Expected 3 or 4 columns (video, start, end, label), found {len(cells)}."
            )
        )
        return None
    if label_col < 0 and len(cells) == 4:
        label_col = 3
    problems: list[str] = []
    video_ref = cells[columns["video"]].strip()
    if not video_ref:
        problems.append("the video is empty")
    start = end = 0
    try:
        start = parse_time(cells[columns["start"]])
    except ValueError as exc:
        problems.append(f"start: {exc}")
    try:
        end = parse_time(cells[columns["end"]])
    except ValueError as exc:
        problems.append(f"end: {exc}")
    label = None
    if 0 <= label_col < len(cells):
        try:
            label = parse_label(cells[label_col])
        except ValueError as exc:
            problems.append(f"label: {exc}")
    if not problems and end < start:
        problems.append("the end is before the start")
    if problems:
        errors.append(LineError(line, "; ".join(problems) + "."))
        return None
    return _Row(line, video_ref, start, end, label)


# --------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------


def _basename(ref: str) -> str:
    return PureWindowsPath(ref).name if "\\" in ref else PurePosixPath(ref).name


def resolve_videos(refs: Iterable[str]) -> tuple[dict[str, Video], dict[str, str]]:
    """Map each reference to a video; returns ``(found, problems)`` keyed by reference.

    Tried in this order: id, stored media path, original name, original path's file name.
    Two videos answering to one name is an error (the user must use the id), never a guess.
    """
    refs = set(refs)
    found: dict[str, Video] = {}
    problems: dict[str, str] = {}
    ids = {r: int(r) for r in refs if r.isdigit()}
    by_id = Video.objects.in_bulk(list(ids.values()))
    for ref, pk in ids.items():
        if pk in by_id:
            found[ref] = by_id[pk]
    rest = refs - found.keys()
    if rest:
        names = {r: _basename(r) for r in rest}
        query = Q(file__in=rest) | Q(original_name__in=rest | set(names.values()))
        candidates = list(
            Video.objects.filter(query).only(
                "pk", "file", "original_name", "title", "fps", "n_frames", "duration_ms"
            )
        )
        for ref in rest:
            for field_name, wanted in (
                ("file", ref),
                ("original_name", ref),
                ("original_name", names[ref]),
            ):
                matches = [v for v in candidates if getattr(v, field_name) == wanted]
                if len(matches) == 1:
                    found[ref] = matches[0]
                    break
                if len(matches) > 1:
                    ids_text = ", ".join(str(v.pk) for v in matches[:5])
                    problems[ref] = (
                        f"“{ref}” matches {len(matches)} videos (ids {ids_text}); use the id."
                    )
                    break
            else:
                problems[ref] = f"Unknown video “{ref[:200]}” (no video with this id or path)."
    return found, problems


# --------------------------------------------------------------------------
# Planning and applying
# --------------------------------------------------------------------------


def plan_import(content: bytes) -> Plan:
    """Validate a whole file; :class:`SequenceImportError` lists every problem."""
    if len(content) > MAX_BYTES:
        raise SequenceImportError(
            [LineError(0, f"The file is larger than {MAX_BYTES // 2**20} MB; split it.")]
        )
    rows, errors = read_rows(decode(content))
    videos, problems = resolve_videos(r.video_ref for r in rows)
    plan = Plan()
    for row in rows:
        if row.video_ref in problems:
            errors.append(LineError(row.line, problems[row.video_ref]))
            continue
        video = videos[row.video_ref]
        if not video.fps or video.fps <= 0:
            errors.append(LineError(row.line, f"Video {video.pk} has no frame rate."))
            continue
        if video.duration_ms and row.start_ms >= video.duration_ms:
            errors.append(
                LineError(
                    row.line,
                    (
                        f"The interval starts at {format_ms(row.start_ms)}, after the end of "
                        f"“{video.title}” ({format_ms(video.duration_ms)})."
                    ),
                )
            )
            continue
        end = row.end_ms
        if video.duration_ms and end > video.duration_ms:
            plan.warnings.append(
                LineError(
                    row.line,
                    (
                        f"The end {format_ms(end)} is after the end of “{video.title}”; "
                        f"used {format_ms(video.duration_ms)}."
                    ),
                )
            )
            end = video.duration_ms
        plan.intervals.append(Interval(row.line, video.pk, row.start_ms, end, row.label))
        if len(errors) >= MAX_ERRORS:
            break
    if errors:
        raise SequenceImportError(sorted(errors, key=lambda e: e.line)[:MAX_ERRORS])
    plan.n_videos = len({i.video_id for i in plan.intervals})
    return plan


def format_ms(ms: int) -> str:
    seconds, millis = divmod(int(ms), 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def frame_range(start_ms: int, end_ms: int, fps: float) -> tuple[int, int]:
    """Frames shown during ``[start_ms, end_ms]`` with the video's own frame rate.

    Frame ``f`` is on screen from ``f / fps`` to ``(f + 1) / fps`` seconds; a frame belongs
    to the interval when it is on screen at some moment of it.
    """
    first = math.floor(start_ms * fps / 1000 + 1e-9)
    last = math.floor(end_ms * fps / 1000 + 1e-9)
    if last > first and math.isclose(end_ms * fps / 1000, last, abs_tol=1e-9):
        last -= 1  # the interval ends exactly where frame `last` begins
    return first, max(first, last)


def keyframes_in(plan: Plan) -> tuple[dict[int, int | None], dict[int, list[int]], list[str]]:
    """Keyframes per interval: ``(image → label, line → images, warnings)``.

    One query per video (keyframes sorted by frame) and a binary search per interval, so a
    file with many intervals does not cost a query per row.
    """
    by_video: dict[int, list[Interval]] = {}
    for interval in plan.intervals:
        by_video.setdefault(interval.video_id, []).append(interval)
    fps = dict(Video.objects.filter(pk__in=list(by_video)).values_list("pk", "fps"))
    labels: dict[int, int | None] = {}
    label_line: dict[int, int] = {}
    per_line: dict[int, list[int]] = {}
    warnings: list[str] = []
    for video_id, intervals in by_video.items():
        frames = list(
            Image.objects.filter(video_id=video_id).order_by("frame").values_list("frame", "pk")
        )
        keys = [f for f, _ in frames]
        for interval in intervals:
            first, last = frame_range(interval.start_ms, interval.end_ms, fps[video_id])
            lo, hi = bisect.bisect_left(keys, first), bisect.bisect_right(keys, last)
            images = [pk for _, pk in frames[lo:hi]]
            per_line[interval.line] = images
            for pk in images:
                old = labels.get(pk)
                if interval.label is not None:
                    if old is not None and old != interval.label:
                        warnings.append(
                            f"Line {interval.line}: a keyframe also labelled on line "
                            f"{label_line[pk]} gets this line's label."
                        )
                    labels[pk] = interval.label
                    label_line[pk] = interval.line
                else:
                    labels.setdefault(pk, None)
    return labels, per_line, warnings


def apply_plan(plan: Plan, category: Category, *, user=None) -> ImportSummary:
    """Add the keyframes as candidates and save the labels, all in one transaction."""
    labels, per_line, warnings = keyframes_in(plan)
    summary = ImportSummary(rows=plan.n_rows, videos=plan.n_videos, keyframes=len(labels))
    summary.warnings = [str(w) for w in plan.warnings] + warnings
    summary.empty_intervals = sum(1 for images in per_line.values() if not images)
    for line, images in sorted(per_line.items()):
        if not images:
            summary.warnings.append(f"Line {line}: no keyframe lies inside this interval.")
    labelled = [(pk, value) for pk, value in labels.items() if value is not None]
    summary.labelled = len(labelled)
    with transaction.atomic():
        summary.new_candidates = add_candidates(
            category, labels.keys(), source=Source.IMPORT, user=user
        )
        for start in range(0, len(labelled), LABEL_BATCH):
            result = save_labels(
                category, labelled[start : start + LABEL_BATCH], user=user, source=Source.IMPORT
            )
            summary.labels_saved += result.saved
    return summary


def import_sequences(content: bytes, category: Category, *, user=None) -> ImportSummary:
    """Validate and import a whole file (used by the job and by small uploads)."""
    return apply_plan(plan_import(content), category, user=user)
