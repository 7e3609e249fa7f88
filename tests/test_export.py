"""Export of segments and of the labelled dataset (issue 5, item 4).

Segment boundaries are computed by hand from the rules in ``retrieval/export.py``;
the archive and scores are those of ``tests/test_retrieval.py``.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest
from django.urls import reverse
from PIL import Image as PILImage

from annotation.labels import save_labels
from annotation.models import Category
from retrieval.export import KeyframeRow, Segment, segments_of_video
from retrieval.query import Filters, Query, Term
from tests.test_retrieval import make_archive
from viva.jobs import run_job, start_job
from viva.media import write_jpeg
from viva.models import Job


def seg(segment: Segment) -> tuple:
    return segment.start_ms, segment.duration_ms, segment.max_score, segment.keyframes


# --------------------------------------------------------------------------- merging


def test_segments_merge_consecutive_keyframes_of_a_shot():
    shots = {1: (0, 4000), 2: (4000, 8000)}
    keyframes = [
        KeyframeRow(11, 1, 500),
        KeyframeRow(12, 1, 1500),
        KeyframeRow(13, 1, 2500),  # below the threshold: splits the shot
        KeyframeRow(14, 1, 3500),
        KeyframeRow(21, 2, 5000),
        KeyframeRow(99, None, 9000),  # a keyframe without a shot
    ]
    scores = {11: 0.8, 12: 0.9, 14: 0.75, 21: 0.72, 99: 0.71}
    # Keyframe boundaries in shot 1: 0 | 1000 | 2000 | 3000 | 4000.
    split = segments_of_video(shots, keyframes, scores, merge_shots=False)
    assert [seg(s) for s in split] == [
        (0, 2000, 0.9, 2),
        (3000, 1000, 0.75, 1),
        (4000, 4000, 0.72, 1),
        (9000, 0, 0.71, 1),
    ]
    # Adjacent shots (gap 0 ≤ one frame) merge; the shotless keyframe is 1 s away.
    merged = segments_of_video(shots, keyframes, scores, merge_shots=True, gap_ms=40)
    assert [seg(s) for s in merged] == [
        (0, 2000, 0.9, 2),
        (3000, 5000, 0.75, 2),
        (9000, 0, 0.71, 1),
    ]
    assert merged[1].shot_ids == [1, 2]


def test_segments_gap_of_one_frame_merges_two_frames_do_not():
    shots = {1: (0, 1960), 2: (2000, 3960), 3: (4040, 6000)}
    keyframes = [KeyframeRow(1, 1, 1000), KeyframeRow(2, 2, 3000), KeyframeRow(3, 3, 5000)]
    scores = {1: 0.9, 2: 0.8, 3: 0.7}
    merged = segments_of_video(shots, keyframes, scores, gap_ms=40)
    assert [seg(s) for s in merged] == [(0, 3960, 0.9, 2), (4040, 1960, 0.7, 1)]


def test_no_hits_no_segments():
    assert segments_of_video({1: (0, 1000)}, [KeyframeRow(1, 1, 500)], {}) == []


# --------------------------------------------------------------------------- jobs


def read_zip(job: Job, client) -> zipfile.ZipFile:
    response = client.get(job.result["url"])
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment")
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


def csv_rows(zf: zipfile.ZipFile, name: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(zf.read(name).decode())))


@pytest.fixture
def arch(db):
    return make_archive()


def test_export_segments_job_for_a_category(arch, users, client_for):
    job = start_job(
        "export_segments",
        {"category_id": arch["A"].pk, "threshold": 0.7, "merge_shots": True},
        user=users["researcher"],
    )
    assert job.queue == "io"
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.result["segments"] == 2 and job.result["keyframes"] == 4
    assert job.progress == job.total == 2  # one step per video
    zf = read_zip(job, client_for("researcher"))
    names = set(zf.namelist())
    assert names == {
        "segments.csv",
        "segments.json",
        f"videos/{arch['v1'].pk}.csv",
        f"videos/{arch['v2'].pk}.csv",
    }
    rows = csv_rows(zf, "segments.csv")
    # v1: s1 (i1 .9, i2 .8) = 0–2000; s2: i3 (.7) = 2000–2800, i4 (.3) not; adjacent → merged.
    # v2: s3: i5 (.95) = 0–1000, i6 (.6) not.
    got = [(r["video_title"], r["start_ms"], r["duration_ms"], r["max_score"]) for r in rows]
    assert got == [("Evening News", "0", "2800", "0.9"), ("Sports Report", "0", "1000", "0.95")]
    assert rows[0]["category"] == "Concept A" and rows[0]["keyframes"] == "3"
    data = json.loads(zf.read("segments.json"))
    assert data["threshold"] == 0.7 and len(data["videos"]) == 2
    assert data["videos"][0]["segments"] == [
        {"start_ms": 0, "duration_ms": 2800, "max_score": 0.9, "keyframes": 3}
    ]
    per_video = csv_rows(zf, f"videos/{arch['v2'].pk}.csv")
    assert [r["start_ms"] for r in per_video] == ["0"]
    # Run twice (a redelivered task): same file, same result.
    Job.objects.filter(pk=job.pk).update(status=Job.Status.QUEUED)
    assert run_job(job.pk) == "succeeded"


def test_export_segments_without_merging_shots(arch, users):
    job = start_job(
        "export_segments",
        {"category_id": arch["A"].pk, "threshold": 0.7, "merge_shots": False},
        user=users["researcher"],
    )
    run_job(job.pk)
    job.refresh_from_db()
    assert job.result["segments"] == 3


def test_export_segments_of_a_combined_query(arch, users, client_for):
    query = Query((Term(arch["A"].pk, "and", 0.5), Term(arch["B"].pk, "and", 0.5)), Filters())
    job = start_job(
        "export_segments", {"query": query.urlencode(), "threshold": 0.7}, user=users["trainer"]
    )
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    zf = read_zip(job, client_for("trainer"))
    rows = csv_rows(zf, "segments.csv")
    # Combined scores: i2 .8, i5 .8 (i1 .6, i6 .6 are below 0.7).
    # v1 s1: i1 @400 (no) | 800 | i2 @1200 → 800–2000. v2: i5 → 0–1000.
    assert [(r["start_ms"], r["duration_ms"], r["max_score"]) for r in rows] == [
        ("800", "1200", "0.8"),
        ("0", "1000", "0.8"),
    ]
    assert rows[0]["category"] == "Concept A ≥ 0.5 AND Concept B ≥ 0.5"


def test_export_job_errors_are_clear(arch, users):
    job = start_job("export_segments", {"category_id": 999999}, user=users["researcher"])
    assert run_job(job.pk) == "failed"
    job.refresh_from_db()
    assert "no longer exists" in job.error
    lonely = Category.objects.create(name="Person X", kind="person")
    job = start_job("export_segments", {"category_id": lonely.pk}, user=users["researcher"])
    run_job(job.pk)
    job.refresh_from_db()
    assert "No published person model" in job.error


def test_download_is_checked(arch, users, client_for):
    job = start_job("export_segments", {"category_id": arch["A"].pk}, user=users["researcher"])
    url = reverse("retrieval:download", args=[job.pk])
    assert client_for("researcher").get(url).status_code == 404  # not run yet
    run_job(job.pk)
    assert client_for("researcher").get(url).status_code == 200
    assert client_for("annotator").get(url).status_code == 403  # someone else's export
    assert client_for("trainer").get(url).status_code == 200
    other = Job.objects.create(kind="import_videos", status="succeeded", result={"file": "x"})
    assert client_for("admin").get(reverse("retrieval:download", args=[other.pk])).status_code == (
        404
    )


def test_export_page_starts_jobs(arch, client_for):
    client = client_for("researcher")
    url = reverse("retrieval:export")
    response = client.get(url, {"category": arch["A"].pk})
    assert response.status_code == 200 and b'value="70"' in response.content
    response = client.post(url, {"category": arch["A"].pk, "threshold": "80", "merge_shots": "0"})
    job = Job.objects.get(kind="export_segments")
    assert response["Location"] == reverse("jobs:detail", args=[job.pk])
    assert job.params == {"category_id": arch["A"].pk, "threshold": 0.8, "merge_shots": False}
    query = Query((Term(arch["A"].pk, "or", 0.5),))
    client.post(url, {"query": query.urlencode(), "threshold": "0.75"})
    assert Job.objects.filter(kind="export_segments").first().params["query"] == query.urlencode()
    client.post(url, {"what": "dataset", "categories": [arch["B"].pk], "include_images": "1"})
    job = Job.objects.get(kind="export_dataset")
    assert job.params == {"category_ids": [arch["B"].pk], "include_images": True}
    assert client.post(url, {"query": f"t=concept:{arch['A'].pk}:not:0.5"}).status_code == 302
    assert Job.objects.filter(kind="export_segments").count() == 2  # NOT alone: refused


def test_export_dataset_with_image_files(arch, users, client_for, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    write_jpeg(PILImage.new("RGB", (8, 8), (1, 2, 3)), arch["i"][1].file)
    save_labels(arch["A"], [(arch["i"][1].pk, 1), (arch["i"][2].pk, -1)], user=users["annotator"])
    save_labels(arch["B"], [(arch["i"][1].pk, 0)], user=users["annotator"], source="feedback")
    job = start_job(
        "export_dataset",
        {"category_ids": [arch["A"].pk, arch["B"].pk], "include_images": True},
        user=users["researcher"],
    )
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.result["annotations"] == 3 and job.result["images"] == 2
    assert job.result["files"] == 1 and job.result["missing_files"] == 1
    zf = read_zip(job, client_for("researcher"))
    assert f"images/{arch['i'][1].file}" in zf.namelist()
    rows = csv_rows(zf, "annotations.csv")
    got = [(int(r["image_id"]), r["category"], r["label"], r["source"]) for r in rows]
    i1, i2 = arch["i"][1].pk, arch["i"][2].pk
    assert got == [
        (i1, "Concept A", "positive", "grid"),
        (i1, "Concept B", "neutral", "feedback"),
        (i2, "Concept A", "negative", "grid"),
    ]
    assert rows[0]["video_title"] == "Evening News" and rows[0]["user"] == "annotator"
    data = json.loads(zf.read("dataset.json"))
    assert {c["name"] for c in data["categories"]} == {"Concept A", "Concept B"}
    assert [len(im["labels"]) for im in data["images"]] == [2, 1]


def test_export_dataset_all_categories_without_files(arch, users):
    save_labels(arch["C"], [(arch["i"][3].pk, 1)], user=users["annotator"])
    job = start_job("export_dataset", {}, user=users["researcher"])
    run_job(job.pk)
    job.refresh_from_db()
    assert job.result["annotations"] == 1 and job.result["files"] == 0


def test_category_export_keeps_the_metadata_filters(arch, client_for):
    client = client_for("researcher")
    url = reverse("retrieval:export")
    response = client.get(url, {"category": arch["A"].pk, "title": "sports", "min_score": "0.9"})
    assert b'name="filters" value="title=sports"' in response.content
    client.post(url, {"category": arch["A"].pk, "threshold": "70", "filters": "title=sports"})
    job = Job.objects.get(kind="export_segments")
    assert job.params["filters"] == "title=sports"
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    assert (job.result["videos"], job.result["keyframes"]) == (1, 1)  # only i5 of v2
