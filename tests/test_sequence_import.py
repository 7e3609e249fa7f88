"""Sequence import: CSV of (video, start, end[, label]) → keyframes become candidates / labels.

Videos are real (synthetic footage imported with shot detection), at 25 and 30 fps, so the
frame arithmetic is checked against each video's own frame rate (the original VIVA assumed
25 fps everywhere).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from annotation import sequence_import
from annotation.models import Annotation, AnnotationEvent, Candidate, Category
from annotation.sequence_import import (
    SequenceImportError,
    format_ms,
    frame_range,
    parse_time,
    plan_import,
)
from viva.ingest.importer import import_video
from viva.ingest.synth import make_synthetic_video
from viva.jobs import run_job
from viva.models import Collection, Image, Job, Video


@pytest.fixture(scope="module")
def video_files(tmp_path_factory) -> dict[str, Path]:
    """Two short synthetic videos (made once per module): 25 fps and 30 fps."""
    folder = tmp_path_factory.mktemp("videos")
    files = {}
    for name, fps, seed in (("news_1989.mp4", 25, 1), ("sport_30fps.mp4", 30, 2)):
        path = folder / name
        make_synthetic_video(
            path, n_scenes=3, fps=fps, size=(160, 96), seed=seed, scene_seconds=(1.0, 1.4)
        )
        files[name] = path
    return files


@pytest.fixture
def videos(db, settings, tmp_path, video_files) -> dict[str, Video]:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.VAR_DIR = tmp_path / "var"
    collection = Collection.objects.create(name="Archive")
    result = {}
    for name, path in video_files.items():
        _status, video = import_video(path, collection)
        result[name] = video
    return result


@pytest.fixture
def category(db) -> Category:
    return Category.objects.create(name="Anchorman")


@pytest.fixture
def annotator(client_for, category):
    client = client_for("annotator")
    client.post(reverse("annotation:category_select"), {"category": category.pk})
    return client


def post_csv(client, text: str | bytes, name: str = "intervals.csv"):
    content = text.encode() if isinstance(text, str) else text
    return client.post(
        reverse("annotation:sequence_import"),
        {"file": SimpleUploadedFile(name, content, content_type="text/csv")},
    )


def keyframes(video: Video) -> list[Image]:
    return list(video.keyframes.order_by("frame"))


def expected_ids(video: Video, start_ms: int, end_ms: int) -> set[int]:
    """Keyframes whose frame is on screen during [start, end), from the video's own fps."""
    return {
        k.pk
        for k in keyframes(video)
        if k.frame * 1000 / video.fps < end_ms and (k.frame + 1) * 1000 / video.fps > start_ms
    }


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("0", 0),
        ("83250", 83250),
        ("00:01:23.250", 83250),
        ("1:23.250", 83250),
        ("01:23", 83000),
        ("1:00:00", 3_600_000),
        ("00:00:01.5", 1500),
        ("00:00:01,25", 1250),
        (" 12 ", 12),
    ],
)
def test_parse_time(text, ms):
    assert parse_time(text) == ms


@pytest.mark.parametrize("text", ["", "-5", "1.5", "abc", "00:61:00", "00:00:75", "1:2:3:4"])
def test_parse_time_refuses(text):
    with pytest.raises(ValueError):
        parse_time(text)


def test_frame_range_uses_the_given_rate():
    assert frame_range(1000, 2000, 25) == (25, 49)  # 2000 ms is where frame 50 begins
    assert frame_range(1000, 2000, 30) == (30, 59)
    assert frame_range(1010, 1010, 25) == (25, 25)
    assert frame_range(0, 33, 29.97) == (0, 0)
    assert format_ms(83250) == "00:01:23.250"


# --------------------------------------------------------------------------
# Good files
# --------------------------------------------------------------------------


def test_good_csv_with_header_and_labels(annotator, videos, category, users):
    news, sport = videos["news_1989.mp4"], videos["sport_30fps.mp4"]
    csv_text = (
        "video,start,end,label\n"
        f"{news.pk},00:00:00.000,00:00:01.000,positive\n"
        f"sport_30fps.mp4,1000,2500,\n"
        f"{news.original_name},2000,3000,negative\n"
    )
    response = post_csv(annotator, csv_text)
    assert response.status_code == 200, response.content.decode()[:3000]
    text = response.content.decode()
    assert 'id="import-summary"' in text and reverse("annotation:label") in text

    first = expected_ids(news, 0, 1000)
    second = expected_ids(sport, 1000, 2500)
    third = expected_ids(news, 2000, 3000)
    assert first and second and third
    candidates = set(Candidate.objects.filter(category=category).values_list("image_id", flat=True))
    assert candidates == first | second | third
    assert set(Candidate.objects.values_list("source", flat=True)) == {"import"}
    labels = dict(Annotation.objects.values_list("image_id", "value"))
    assert labels == {**dict.fromkeys(first, 1), **dict.fromkeys(third, -1)}
    assert set(AnnotationEvent.objects.values_list("source", flat=True)) == {"import"}
    assert set(Annotation.objects.values_list("user", flat=True)) == {users["annotator"].pk}


def test_headerless_semicolons_bom_and_the_video_path(annotator, videos, category):
    sport = videos["sport_30fps.mp4"]
    csv_bytes = (
        "\ufeff"
        f"{sport.file};00:00:00.500;00:00:02.000\n"
        "\n# a comment line\n"
        f"/mnt/archive/sport/sport_30fps.mp4;3000;3500\n"
    ).encode()
    response = post_csv(annotator, csv_bytes)
    assert response.status_code == 200, response.content.decode()[:3000]
    wanted = expected_ids(sport, 500, 2000) | expected_ids(sport, 3000, 3500)
    assert set(Candidate.objects.values_list("image_id", flat=True)) == wanted
    assert Annotation.objects.count() == 0  # no label column: candidates only


def test_frames_come_from_the_videos_frame_rate(videos, category):
    """An interval of ±10 ms around one keyframe of the 30 fps video catches exactly it.

    With a constant 25 fps the frame computed for that moment would be wrong by a fifth.
    """
    sport = videos["sport_30fps.mp4"]
    late = [k for k in keyframes(sport) if k.frame > 40][0]
    moment = round(late.frame * 1000 / sport.fps)
    content = f"{sport.pk},{moment},{moment + 10},positive\n".encode()
    summary = sequence_import.import_sequences(content, category)
    assert set(Annotation.objects.values_list("image_id", flat=True)) == {late.pk}
    assert summary.keyframes == 1 and summary.labels_saved == 1
    wrong_frame = round(moment * 25 / 1000)
    assert wrong_frame != late.frame


def test_end_after_the_video_is_cut_with_a_note(annotator, videos, category):
    news = videos["news_1989.mp4"]
    response = post_csv(annotator, f"{news.pk},0,{news.duration_ms + 60_000}\n")
    assert response.status_code == 200
    assert "is after the end of" in response.content.decode()
    assert Candidate.objects.count() == news.keyframes.count()


def test_importing_twice_changes_nothing(annotator, videos, category):
    news = videos["news_1989.mp4"]
    text = f"{news.pk},0,1500,positive\n"
    post_csv(annotator, text)
    counts = (
        Candidate.objects.count(),
        Annotation.objects.count(),
        AnnotationEvent.objects.count(),
    )
    post_csv(annotator, text)
    assert (
        Candidate.objects.count(),
        Annotation.objects.count(),
        AnnotationEvent.objects.count(),
    ) == counts


def test_large_files_are_imported_by_a_job(annotator, videos, category, monkeypatch):
    monkeypatch.setattr("annotation.views.sequence.SYNC_ROW_LIMIT", 2)
    news = videos["news_1989.mp4"]
    rows = "".join(f"{news.pk},{i * 500},{i * 500 + 400},neutral\n" for i in range(5))
    response = post_csv(annotator, rows)
    assert response.status_code == 302
    job = Job.objects.get(kind="sequence_import")
    assert response["Location"] == reverse("jobs:detail", args=[job.pk])
    assert Candidate.objects.count() == 0
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.result["rows"] == 5 and job.result["url"] == reverse("annotation:label")
    assert Candidate.objects.count() == job.result["keyframes"] > 0
    assert set(Annotation.objects.values_list("value", flat=True)) == {0}
    assert not Path(job.params["path"]).exists()


# --------------------------------------------------------------------------
# Bad files: line-numbered errors, nothing imported
# --------------------------------------------------------------------------


def test_malformed_csv_lists_every_problem_and_imports_nothing(annotator, videos, category):
    news = videos["news_1989.mp4"]
    csv_text = (
        "video,start,end,label\n"  # 1 header
        f"{news.pk},0,1000,positive\n"  # 2 fine
        f"{news.pk},00:00:xx,1000\n"  # 3 bad start
        "no_such_video.mp4,0,1000\n"  # 4 unknown video
        f"{news.pk},2000,1000\n"  # 5 end before start
        f"{news.pk},0,1000,maybe\n"  # 6 bad label
        f"{news.pk},0\n"  # 7 too few columns
        "\n"  # 8 blank: skipped
        "987654,0,1000\n"  # 9 unknown id
        f"{news.pk},{news.duration_ms + 5000},{news.duration_ms + 6000}\n"  # 10 after the end
    )
    response = post_csv(annotator, csv_text, "bad.csv")
    assert response.status_code == 400
    text = response.content.decode()
    assert "bad.csv was not imported" in text
    lines = [int(n) for n in re.findall(r"<li>Line (\d+):", text)]
    assert lines == [3, 4, 5, 6, 7, 9, 10]
    assert "Unknown video “no_such_video.mp4”" in text
    assert "the end is before the start" in text and "is not a label" in text
    assert Candidate.objects.count() == 0 and Annotation.objects.count() == 0


def test_a_header_with_unknown_names_is_an_error(videos):
    with pytest.raises(SequenceImportError) as info:
        plan_import(b"clip,begin_time_code,finish\n1,0,100\n")
    assert info.value.errors[0].line == 1 and "header" in info.value.errors[0].message


def test_ambiguous_file_names_must_use_the_id(videos):
    news = videos["news_1989.mp4"]
    other = Video.objects.get(pk=news.pk)
    other.pk, other.sha256, other.file = None, "f" * 64, "videos/ff/other.mp4"
    other.save()
    with pytest.raises(SequenceImportError) as info:
        plan_import(f"{news.original_name},0,100\n".encode())
    assert "matches 2 videos" in info.value.errors[0].message


def test_not_utf8_and_empty_files(videos):
    with pytest.raises(SequenceImportError) as info:
        plan_import("1,0,100\nvidéo,0,1\n".encode("latin-1"))
    assert "not UTF-8" in info.value.errors[0].message and info.value.errors[0].line == 2
    with pytest.raises(SequenceImportError) as info:
        plan_import(b"\n\n")
    assert "no rows" in info.value.errors[0].message


def test_the_page_documents_the_columns(annotator, db):
    page = annotator.get(reverse("annotation:sequence_import"))
    assert page.status_code == 200
    text = page.content.decode()
    for word in ("video", "start", "end", "label", "HH:MM:SS.mmm", "Example"):
        assert word in text
