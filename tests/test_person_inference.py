"""Person inference over every archive face (issue 7, item 4): chunked, resumable,
unknown faces rejected, one prediction per (keyframe, person) with its best face."""

from __future__ import annotations

import numpy as np
import pytest
from django.urls import reverse

from retrieval.inference import InferenceRefused
from retrieval.models import InferenceChunk, InferenceRun, Prediction
from retrieval.persons.inference import (
    JOB_KIND,
    plan_chunks,
    start_person_inference,
    work_on_run,
)
from tests.person_data import add_faces, make_world, sample_faces
from tests.test_person_training import FakeContext
from training.models import ModelVersion
from training.persons.service import load_model, set_threshold, train_persons
from viva.jobs.runner import run_job
from viva.models import Face, Job


@pytest.fixture
def trained(db, settings, tmp_path):
    settings.VIVA_MODELS_DIR = tmp_path / "models"
    world = make_world({"Ada": 15, "Bert": 15}, unlabelled_each=8, unknown_labelled=25)
    train_persons(FakeContext({"min_faces": 10}))
    return world


def test_refused_without_a_person_model(db):
    with pytest.raises(InferenceRefused, match="no active person model"):
        start_person_inference(None)
    assert not Job.objects.filter(kind=JOB_KIND).exists()


def test_inference_recognises_known_faces_and_rejects_strangers(trained, users):
    world = trained
    job = start_person_inference(users["trainer"], {"chunk_size": 7})
    assert job.queue == "default"
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    run = InferenceRun.objects.get(kind="person")
    assert run.is_published and run.status == InferenceRun.Status.COMPLETE
    assert run.n_chunks == run.chunks.count() > 3
    version = ModelVersion.objects.get(kind="person")
    assert run.score_floor == version.config["threshold"]

    preds = {(p.image_id, p.category_id): p for p in Prediction.objects.filter(run=run)}
    ada, bert = world.persons["Ada"], world.persons["Bert"]
    for face in world.unlabelled["Ada"]:
        p = preds[(face.image_id, ada.pk)]
        assert p.face_id == face.pk and p.score >= run.score_floor
        assert (face.image_id, bert.pk) not in preds
    for face in world.unlabelled["Bert"]:
        assert preds[(face.image_id, bert.pk)].face_id == face.pk
    stranger_images = {f.image_id for f in world.unknown_unlabelled}
    recognised = sum(1 for (image, _c) in preds if image in stranger_images)
    assert recognised <= 0.2 * len(stranger_images)  # ≥ 80 % of unknown faces rejected
    assert job.result["n_faces"] == Face.objects.count()

    # Running the job again does nothing; a new run supersedes the old one.
    Job.objects.filter(pk=job.pk).update(status=Job.Status.QUEUED)
    assert run_job(job.pk) == "succeeded"
    assert Prediction.objects.filter(run=run).count() == len(preds)


def test_best_face_per_keyframe_and_resume_after_a_crash(trained, users):
    world = trained
    # A second face of Ada in the keyframe of one of her unlabelled faces.
    target = world.unlabelled["Ada"][0]
    centre = Face.unpack_embeddings([world.labelled["Ada"][0].embedding])[0]
    vector = sample_faces(centre, 1, np.random.default_rng(5))
    twin = add_faces(world.videos["news"], vector)[0]
    Face.objects.filter(pk=twin.pk).update(image=target.image)
    job = start_person_inference(users["trainer"], {"chunk_size": 5})
    run = InferenceRun.objects.get(kind="person")
    plan_chunks(run, 5)
    # A worker that stops after two chunks (crash): those stay done, nothing published.
    stats = work_on_run(run, max_chunks=2)
    assert stats.chunks == 2
    assert InferenceChunk.objects.filter(run=run, status="done").count() == 2
    run.refresh_from_db()
    assert not run.is_published
    done_before = set(
        Prediction.objects.filter(run=run).values_list("image_id", "category_id", "score")
    )
    assert run_job(job.pk) == "succeeded"
    run.refresh_from_db()
    assert run.is_published
    after = set(Prediction.objects.filter(run=run).values_list("image_id", "category_id", "score"))
    assert done_before <= after
    rows = Prediction.objects.filter(
        run=run, image_id=target.image_id, category=world.persons["Ada"]
    )
    assert rows.count() == 1  # one row per (keyframe, person): the better of both faces
    model = load_model(ModelVersion.objects.get(kind="person"))
    both = Face.unpack_embeddings([target.embedding, twin.embedding])
    probability = model.recognise(both).probability
    scores = {target.pk: probability[0], twin.pk: probability[1]}
    assert rows.get().face_id == max(scores, key=scores.get)


def test_a_changed_threshold_starts_a_new_run(trained, users):
    version = ModelVersion.objects.get(kind="person")
    first = start_person_inference(users["trainer"])
    assert run_job(first.pk) == "succeeded"
    n_before = Prediction.objects.filter(run__is_published=True).count()
    set_threshold(version, 0.0)  # accept everything: strangers too
    second = start_person_inference(users["trainer"])
    assert run_job(second.pk) == "succeeded"
    runs = InferenceRun.objects.filter(kind="person").order_by("created_at")
    assert [r.status for r in runs] == ["superseded", "complete"]
    assert runs.last().score_floor == 0.0
    assert Prediction.objects.filter(run=runs.first()).count() == 0  # purged
    assert Prediction.objects.filter(run=runs.last()).count() > n_before


def test_the_inference_page_starts_person_recognition(trained, client_for):
    client = client_for("trainer")
    url = reverse("training:inference")
    page = client.get(url)
    assert page.status_code == 200
    assert page.context["person_active"].kind == "person"
    assert 'data-testid="recognise-persons"' in page.content.decode()
    response = client.post(url, {"action": "persons"})
    assert response.status_code == 302
    job = Job.objects.get(kind=JOB_KIND)
    assert run_job(job.pk) == "succeeded"
    page = client.get(url)
    assert page.context["person_published"].is_published
    # Without an active person model the page says why nothing started.
    ModelVersion.objects.filter(kind="person").update(is_active=False)
    refused = client.post(url, {"action": "persons"})
    assert "Person recognition was not started" in refused.content.decode()


def test_only_faces_of_the_models_embedder_are_recognised(trained, users):
    world = trained
    version = ModelVersion.objects.get(kind="person")
    assert version.config["embedder"] == "random"
    # A face of Ada embedded by other weights: its scores would be noise, so it is skipped.
    centre = Face.unpack_embeddings([world.labelled["Ada"][0].embedding])[0]
    other = add_faces(
        world.videos["news"],
        sample_faces(centre, 1, np.random.default_rng(6)),
        embedder="vggface2",
    )[0]
    assert run_job(start_person_inference(users["trainer"]).pk) == "succeeded"
    run = InferenceRun.objects.get(kind="person")
    assert not Prediction.objects.filter(run=run, image_id=other.image_id).exists()
    assert run.n_images == Face.objects.filter(embedder="random").count()
    # Versions from before the key existed still score every face.
    config = dict(version.config)
    del config["embedder"]
    ModelVersion.objects.filter(pk=version.pk).update(config=config)
    version.refresh_from_db()
    from retrieval.persons.inference import archive_faces

    assert archive_faces(version).count() == archive_faces().count() == Face.objects.count()
    assert archive_faces().filter(embedder="random").count() + 1 == Face.objects.count()


def test_refused_when_no_face_has_the_models_embedder(trained, users):
    Face.objects.update(embedder="vggface2")
    with pytest.raises(InferenceRefused, match="embedder"):
        start_person_inference(users["trainer"])
