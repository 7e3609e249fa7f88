"""Chunked inference (issue 5, item 1): planning, claiming, idempotent writes, a killed
worker's chunks taken over, publishing only complete runs, refusals, the page.

The model here is a random tiny-cnn saved as a version (milliseconds); the test through a
real Celery worker with a trained model is in ``test_inference_worker.py``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.urls import reverse
from django.utils import timezone

from annotation.models import Category
from retrieval import inference as inf
from retrieval.inference import InferenceRefused, start_inference
from retrieval.models import InferenceChunk, InferenceRun, Prediction
from training.models import ModelVersion
from training.synthetic import SHAPES, write_shape_files
from viva.jobs.runner import run_job
from viva.models import Collection, Image, Job, Video


# --- helpers (also used by test_inference_worker.py) -----------------------------------
def make_keyframes(
    n: int, *, name: str = "Keyframes", seed: int = 0, broken: int = 0
) -> list[Image]:
    """``n`` keyframes of one video in a new collection (shape pictures as JPEG files);
    the last ``broken`` of them have corrupt files."""
    collection = Collection.objects.create(name=name)
    video = Video.objects.create(
        collection=collection,
        title=f"{name} video",
        file=f"videos/{name}.mp4",
        sha256=f"{name}-{seed}".ljust(64, "0")[:64],
        fps=25,
        n_frames=n * 10,
        duration_ms=n * 400,
        width=96,
        height=72,
    )
    media = Path(django_settings.MEDIA_ROOT)
    folder = media / "kf" / f"{name}-{seed}"
    files = write_shape_files(folder, -(-n // 3), seed=seed)[:n]
    images, shown = [], []
    for i, (path, names) in enumerate(files):
        shown.append(names)
        if i >= n - broken:
            path.write_bytes(b"\xff\xd8\xff\xe0 truncated")
        images.append(
            Image(
                collection=collection,
                video=video,
                frame=i * 10,
                time_ms=i * 400,
                file=str(path.relative_to(media)),
                sha256=f"{name}-{seed}-{i}",
                width=96,
                height=72,
            )
        )
    images = Image.objects.bulk_create(images)
    for image, names in zip(images, shown, strict=True):
        image.shown = names  # the shapes it shows (the truth for AP checks)
    return images


def make_version(categories: list[Category] | None = None, seed: int = 0) -> ModelVersion:
    """A random tiny-cnn version with a class map over ``categories`` (active)."""
    import torch

    from training.networks import build_model, network_config
    from training.registry import save_version

    if categories is None:
        categories = [
            Category.objects.get_or_create(name=n, kind=Category.Kind.CONCEPT)[0] for n in SHAPES
        ]
    torch.manual_seed(seed)
    config = network_config("tiny-cnn", len(categories), image_size=64)
    model = build_model(config)
    return save_version(
        state_dict=model.state_dict(),
        config=config,
        class_map=[{"index": i, "id": c.pk, "name": c.name} for i, c in enumerate(categories)],
        split={},
        metrics={},
        evaluations=[],
    )


@pytest.fixture
def models_dir(settings, tmp_path):
    settings.VIVA_MODELS_DIR = tmp_path / "models"
    settings.VIVA_PREDICTION_FLOOR = 0.05
    settings.VIVA_TRAIN_NUM_WORKERS = 0
    return settings.VIVA_MODELS_DIR


@pytest.fixture
def no_enqueue(monkeypatch):
    """Jobs are created but not sent to a broker (run inline with ``run_job``)."""
    monkeypatch.setattr("viva.jobs.runner._enqueue", lambda job: None)


def new_run(version: ModelVersion, collection_ids=()) -> InferenceRun:
    return InferenceRun.objects.create(
        kind=version.kind,
        model_version=version,
        collection_ids=list(collection_ids),
        score_floor=inf.prediction_floor(),
    )


def predictions_of(run: InferenceRun) -> list[tuple[int, int, float]]:
    return sorted(
        Prediction.objects.filter(run=run).values_list("image_id", "category_id", "score")
    )


def expected_scores(version: ModelVersion, images: list[Image]) -> dict[tuple[int, int], float]:
    """What the model gives, computed directly with the training app's scorer."""
    from training.scoring import load_network, score_files

    model, pre = load_network(version)
    readable, logits = score_files(model, pre, [im.file for im in images])
    probs = inf.sigmoid(logits)
    ids = [c["id"] for c in sorted(version.class_map, key=lambda c: c["index"])]
    return {
        (images[i].pk, ids[k]): float(probs[j, k])
        for j, i in enumerate(readable)
        for k in range(len(ids))
    }


# --- planning -----------------------------------------------------------------------------
def test_plan_chunks_covers_every_keyframe_once(db, models_dir):
    a = make_keyframes(7, name="A")
    b = make_keyframes(4, name="B", seed=1)
    Image.objects.create(  # a still: not a keyframe, never scored
        collection=a[0].collection, file="x.jpg", sha256="still", width=1, height=1
    )
    version = make_version()
    run = new_run(version)
    assert inf.plan_chunks(run, chunk_size=3) == 4
    assert inf.plan_chunks(run, chunk_size=3) == 4  # idempotent
    chunks = list(run.chunks.order_by("number"))
    assert [c.n_images for c in chunks] == [3, 3, 3, 2]
    covered = [
        pk
        for c in chunks
        for pk in Image.objects.filter(
            video__isnull=False, pk__gte=c.first_image_id, pk__lte=c.last_image_id
        ).values_list("pk", flat=True)
    ]
    assert covered == sorted(im.pk for im in a + b)
    run.refresh_from_db()
    assert (run.n_images, run.n_chunks) == (11, 4)

    only_b = new_run(version, [b[0].collection_id])
    assert inf.plan_chunks(only_b, chunk_size=3) == 2
    assert [im for c in only_b.chunks.all() for im, _ in inf.chunk_images(c, only_b)] == [
        im.pk for im in b
    ]


def test_claims_are_exclusive_and_stale_claims_are_taken_over(db, models_dir):
    make_keyframes(4)
    run = new_run(make_version())
    inf.plan_chunks(run, chunk_size=2)
    first = inf.claim_chunk(run, "w1")
    second = inf.claim_chunk(run, "w2")
    assert {first.number, second.number} == {0, 1}
    assert inf.claim_chunk(run, "w3") is None  # nothing pending, nobody dead
    # w1 dies: after the heartbeat timeout its chunk goes to w3, and w1 can no longer write.
    InferenceChunk.objects.filter(pk=first.pk).update(
        heartbeat_at=timezone.now()
        - timedelta(seconds=django_settings.VIVA_JOB_HEARTBEAT_TIMEOUT + 5)
    )
    taken = inf.claim_chunk(run, "w3")
    assert taken.pk == first.pk and taken.claimed_by == "w3"
    empty = inf.ScoredChunk(np.zeros(0, np.int64), np.zeros((0, 0), np.float32))
    assert not inf.beat(first, "w1")
    assert not inf.write_chunk(first, "w1", empty, [1, 2, 3], 0.05)
    assert inf.write_chunk(taken, "w3", empty, [1, 2, 3], 0.05)
    # Released chunks are pending again at once.
    inf.release_chunk(second, "w2")
    assert InferenceChunk.objects.get(pk=second.pk).status == "pending"


def test_same_chunk_twice_gives_the_same_predictions_without_duplicates(db, models_dir, settings):
    settings.VIVA_PREDICTION_FLOOR = 0.5
    images = make_keyframes(6)
    version = make_version()
    run = new_run(version)
    inf.plan_chunks(run, chunk_size=6)
    from training.scoring import load_network

    model, pre = load_network(version)
    ids = [c["id"] for c in version.class_map]
    chunk = inf.claim_chunk(run, "w1")
    scored = inf.score_images(model, pre, inf.chunk_images(chunk, run))
    assert inf.write_chunk(chunk, "w1", scored, ids, run.score_floor)
    once = predictions_of(run)
    # The chunk is scored and written again (a redelivered task whose first attempt
    # committed, forced back to claimed): same rows, no duplicates.
    InferenceChunk.objects.filter(pk=chunk.pk).update(status="claimed", claimed_by="w2")
    again = inf.score_images(model, pre, inf.chunk_images(chunk, run))
    assert inf.write_chunk(chunk, "w2", again, ids, run.score_floor)
    assert predictions_of(run) == once
    # Exactly the scores ≥ floor of the direct computation.
    expected = {k: v for k, v in expected_scores(version, images).items() if v >= 0.5}
    got = {(i, c): s for i, c, s in once}
    assert got.keys() == expected.keys() and 0 < len(got) < 6 * 3
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-5)


def test_unreadable_keyframes_are_skipped_and_counted(db, models_dir, no_enqueue, users):
    images = make_keyframes(6, broken=2)
    make_version()
    job = start_inference(users["trainer"], {"device": "cpu", "chunk_size": 4, "workers": 0})
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    run = InferenceRun.objects.get()
    assert (run.n_scored, run.n_skipped, run.n_images) == (4, 2, 6)
    assert f"Skipped unreadable keyframe #{images[-1].pk}" in job.log_tail
    assert {i for i, _c, _s in predictions_of(run)} == {im.pk for im in images[:4]}
    assert job.result["n_skipped"] == 2 and job.progress == job.total == 6
    assert job.metrics.get("images/s")


# --- a killed worker, resumption, publishing ---------------------------------------------------
def test_killed_worker_mid_run_is_completed_by_a_resumed_job(db, models_dir, no_enqueue, users):
    images = make_keyframes(10)
    version = make_version()
    job = start_inference(users["trainer"], {"device": "cpu", "chunk_size": 3, "workers": 0})
    run = InferenceRun.objects.get()
    assert run.job_id == job.pk
    # A first worker scored two chunks, then died holding the third (no release).
    inf.plan_chunks(run, chunk_size=3)
    stats = inf.work_on_run(run, token="dead", max_chunks=2)
    assert stats.chunks == 2
    held = inf.claim_chunk(run, "dead")
    InferenceChunk.objects.filter(pk=held.pk).update(
        heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    assert not InferenceRun.objects.get(pk=run.pk).is_published
    Job.objects.filter(pk=job.pk).update(status=Job.Status.FAILED)
    # The resumed job takes the dead worker's chunk over and finishes the rest.
    from viva.jobs import resume_job

    resume_job(job)
    assert run_job(job.pk) == "succeeded"
    run.refresh_from_db()
    assert run.status == "complete" and run.is_published
    assert run.n_scored == 10 and run.chunks.filter(status="done").count() == 4
    rows = predictions_of(run)
    assert len(rows) == len({(i, c) for i, c, _ in rows})  # no duplicates
    expected = {k: v for k, v in expected_scores(version, images).items() if v >= 0.05}
    assert {(i, c) for i, c, _ in rows} == set(expected)  # nothing skipped


def test_two_workers_share_a_run(db, models_dir):
    make_keyframes(9)
    run = new_run(make_version())
    inf.plan_chunks(run, chunk_size=2)
    a = inf.work_on_run(run, token="a", max_chunks=2)
    b = inf.work_on_run(run, token="b")
    assert (a.chunks, b.chunks) == (2, 3)
    run.refresh_from_db()
    assert run.is_published and run.n_scored == 9
    assert set(run.chunks.values_list("claimed_by", flat=True)) == {"a", "b"}


def test_new_version_replaces_old_only_when_complete(db, models_dir):
    make_keyframes(6)
    old = make_version(seed=1)
    old_run = new_run(old)
    inf.plan_chunks(old_run, chunk_size=3)
    inf.work_on_run(old_run, token="w")
    old_rows = predictions_of(old_run)
    assert inf.published_run() == old_run and old_rows

    new = make_version(seed=2)
    run = new_run(new)
    inf.plan_chunks(run, chunk_size=3)
    inf.work_on_run(run, token="w", max_chunks=1)
    # Half done: retrieval still reads the old run, whose rows are intact.
    assert inf.published_run() == old_run
    assert predictions_of(old_run) == old_rows
    inf.work_on_run(run, token="w")
    assert inf.published_run() == run
    old_run.refresh_from_db()
    assert old_run.status == "superseded" and not old_run.is_published
    assert inf.purge_superseded() == len(old_rows)
    assert not Prediction.objects.filter(run=old_run).exists()
    assert InferenceRun.objects.filter(is_published=True).count() == 1


# --- refusals --------------------------------------------------------------------------------
def test_refusals_give_a_message_and_no_job(db, models_dir, no_enqueue, users):
    trainer = users["trainer"]
    with pytest.raises(InferenceRefused, match="no active concept model"):
        start_inference(trainer, {"device": "cpu"})
    version = make_version()
    with pytest.raises(InferenceRefused, match="no keyframes"):
        start_inference(trainer, {"device": "cpu"})
    images = make_keyframes(3)
    empty = Collection.objects.create(name="Empty")
    with pytest.raises(InferenceRefused, match="chosen collections have no keyframes"):
        start_inference(trainer, {"device": "cpu", "collection_ids": [empty.pk]})
    with pytest.raises(InferenceRefused, match="no longer exists"):
        start_inference(trainer, {"device": "cpu", "collection_ids": [99999]})
    with pytest.raises(InferenceRefused, match="cuda:7 is not available"):
        start_inference(trainer, {"device": "cuda:7"})
    with pytest.raises(InferenceRefused, match="batch size"):
        start_inference(trainer, {"device": "cpu", "batch_size": 0})
    with pytest.raises(InferenceRefused, match="Unknown inference option"):
        start_inference(trainer, {"device": "cpu", "colour": "red"})
    holder = Job.objects.create(kind="train_concepts", queue="gpu", status="running", device="cpu")
    with pytest.raises(InferenceRefused, match=f"busy with .*job {holder.pk}"):
        start_inference(trainer, {"device": "cpu"})
    holder.delete()
    # A category of the class map was deleted.
    Category.objects.get(pk=version.class_map[1]["id"]).delete()
    with pytest.raises(InferenceRefused, match="no longer exist"):
        start_inference(trainer, {"device": "cpu"})
    assert not Job.objects.exists() and not InferenceRun.objects.exists()
    assert images


def test_a_second_start_is_refused_while_running_and_workers_can_join(
    db, models_dir, no_enqueue, users, settings
):
    settings.VIVA_TRAIN_DEVICES = ["cpu", "cuda:0", "cuda:1"]
    make_keyframes(3)
    make_version()
    job = start_inference(users["trainer"], {"device": "cpu"})
    with pytest.raises(InferenceRefused, match="in progress"):
        start_inference(users["trainer"], {"device": "cuda:0"})
    run = InferenceRun.objects.get()
    helper = inf.add_worker(users["trainer"], run, "cuda:1")
    assert helper.params["run_id"] == run.pk == job.params["run_id"]
    assert helper.queue == "gpu" and helper.device == "cuda:1"
    # A cancelled run of the same model is continued, not restarted.
    Job.objects.filter(kind=inf.JOB_KIND).update(status=Job.Status.CANCELLED)
    again = start_inference(users["trainer"], {"device": "cpu"})
    assert again.params["run_id"] == run.pk and InferenceRun.objects.count() == 1


# --- the page ----------------------------------------------------------------------------------
def test_page_renders_per_role_and_starts_a_run(db, models_dir, no_enqueue, client_for):
    url = reverse("training:inference")
    assert client_for("annotator").get(url).status_code == 403
    page = client_for("trainer").get(url)
    assert page.status_code == 200
    assert "no active concept model" in page.content.decode().lower()
    make_keyframes(3)
    version = make_version()
    page = client_for("admin").get(url)
    text = page.content.decode()
    assert f"v{version.version}" in text and 'data-testid="start"' in text
    response = client_for("trainer").post(url, {"device": "cpu"})
    job = Job.objects.get(kind=inf.JOB_KIND)
    assert response.status_code == 302 and response["Location"].endswith(f"?job={job.pk}")
    page = client_for("trainer").get(response["Location"])
    assert page.status_code == 200 and f"#{job.pk}" in page.content.decode()
    # A refusal re-renders with the message and creates nothing.
    response = client_for("trainer").post(url, {"device": "cpu"})
    assert response.status_code == 200 and "in progress" in response.content.decode()
    assert Job.objects.filter(kind=inf.JOB_KIND).count() == 1


def test_page_adds_a_worker_to_a_running_run(db, models_dir, no_enqueue, client_for, settings):
    settings.VIVA_TRAIN_DEVICES = ["cpu", "cuda:1"]
    make_keyframes(3)
    make_version()
    client = client_for("trainer")
    first = client.post(reverse("training:inference"), {"device": "cpu"})
    job = Job.objects.get(kind=inf.JOB_KIND)
    page = client.get(first["Location"]).content.decode()
    assert 'data-testid="join"' in page and "1 worker on this run" in page
    run = InferenceRun.objects.get()
    response = client.post(
        reverse("training:inference"), {"action": "join", "run": run.pk, "device": "cuda:1"}
    )
    helper = Job.objects.exclude(pk=job.pk).get(kind=inf.JOB_KIND)
    assert response.status_code == 302 and helper.params["run_id"] == run.pk
    assert helper.device == "cuda:1"
    assert InferenceRun.objects.count() == 1
