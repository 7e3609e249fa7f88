"""Person recognition training (issue 7, item 3): RBF SVM on embeddings, stratified
cross-validation with per-person AP, a calibrated rejection threshold for unknown faces,
refit, registry version; the one-click job and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
from django.urls import reverse

from annotation.models import Category
from tests.person_data import identity_centres, make_world, sample_faces
from training.errors import TrainingError, TrainingRefused
from training.models import ModelVersion
from training.persons import dataset as ds
from training.persons.service import (
    JOB_KIND,
    load_model,
    set_threshold,
    start_person_training,
    threshold_curve,
    train_persons,
)
from training.persons.svm import (
    PersonModel,
    calibrate_threshold,
    cross_validate,
    make_svm,
    mean_ap,
    per_class_ap,
)
from training.registry import version_dir
from viva.models import Face, Job


class FakeContext:
    """What a handler sees of a job, recorded for assertions."""

    def __init__(self, params: dict | None = None):
        self.params = params or {}
        self.job = None
        self.job_id = None
        self.steps: list[tuple[int, int | None]] = []
        self.metrics: dict[str, list] = {}
        self.lines: list[str] = []

    def progress(self, done, total=None, note=None):
        self.steps.append((done, total))

    def metric(self, series, step, value):
        self.metrics.setdefault(series, []).append([step, value])

    def log(self, message):
        self.lines.append(str(message))

    def check_cancelled(self):
        pass


def _none() -> np.ndarray:
    return np.zeros((0, 512))


def _synthetic(k: int = 4, per: int = 40, strangers: int = 60, seed: int = 3, noise: float = 1.6):
    """Noise 1.6: two faces of one person have cosine ≈ 0.28 — hard enough that the AP
    is not trivially 1 (measured mAP ≈ 0.9 with 10 persons)."""
    rng = np.random.default_rng(seed)
    centres = identity_centres(k + 2 * strangers, seed)
    x = np.vstack([sample_faces(centres[i], per, rng, noise) for i in range(k)])
    y = np.repeat(np.arange(k), per)
    calib = np.vstack(
        [sample_faces(c, 1, rng, noise) for c in centres[k : k + strangers]] or [_none()]
    )
    unseen = np.vstack(
        [sample_faces(c, 1, rng, noise) for c in centres[k + strangers :]] or [_none()]
    )
    fresh = np.vstack([sample_faces(centres[i], 10, rng, noise) for i in range(k)])
    return x, y, calib, unseen, fresh, np.repeat(np.arange(k), 10)


def test_cross_validation_ap_and_rejection_of_unknown_identities():
    x, y, calib, unseen, fresh, fresh_y = _synthetic()
    folds_seen = []
    cv = cross_validate(x, y, calib, seed=0, on_fold=lambda f, n, m: folds_seen.append((f, n)))
    assert folds_seen == [(i, 5) for i in range(1, 6)]
    aps = per_class_ap(y, cv.scores, cv.unknown_scores)
    assert len(aps) == 4 and min(aps) > 0.75
    assert mean_ap(aps) > 0.85
    threshold = calibrate_threshold(y, cv.scores, cv.unknown_scores)
    assert threshold.known_accept >= 0.9
    assert threshold.unknown_reject >= 0.9
    assert 1 / 4 < threshold.value < 1

    # The refit model recognises new faces of known persons and rejects new strangers
    # (identities it never saw, not even for calibration).
    model = PersonModel(make_svm(y).fit(x, y), [{"index": i} for i in range(4)], threshold.value)
    known = model.recognise(fresh)
    assert np.mean(known.accepted & (known.index == fresh_y)) >= 0.85
    strangers = model.recognise(unseen)
    assert np.mean(~strangers.accepted) >= 0.85
    # Without a threshold every stranger would be forced onto somebody.
    assert model.recognise(unseen, threshold=0.0).accepted.all()


def test_without_unknown_faces_the_threshold_accepts_the_target_share():
    x, y, *_ = _synthetic(k=3, per=20, strangers=0)
    cv = cross_validate(x, y, np.zeros((0, x.shape[1])), seed=0)
    threshold = calibrate_threshold(y, cv.scores, cv.unknown_scores, target_accept=0.9)
    assert threshold.unknown_reject is None
    assert threshold.known_accept == pytest.approx(0.9, abs=0.05)


def test_training_registers_a_person_version(db, settings, tmp_path):
    settings.VIVA_MODELS_DIR = tmp_path / "models"
    world = make_world({"Ada": 25, "Bert": 14, "Cleo": 9}, unknown_labelled=25)
    ctx = FakeContext({"min_faces": 10, "max_faces": 20})
    result = train_persons(ctx)

    version = ModelVersion.objects.get(kind=ModelVersion.Kind.PERSON)
    assert version.is_active and result["version"] == version.version == 1
    # Cleo has 9 faces < 10: not a class. Ada is capped at 20 (balanced subsample).
    assert [c["name"] for c in version.class_map] == ["Ada", "Bert"]
    assert version.metrics["faces"] == 20 + 14
    assert version.metrics["unknown_faces"] == 25
    evaluations = {e.category_name: e for e in version.evaluations.all()}
    assert set(evaluations) == {"Ada", "Bert"}
    assert evaluations["Ada"].n_val_pos == 20 and evaluations["Bert"].n_val_pos == 14
    assert all(e.ap > 0.9 for e in evaluations.values())
    assert evaluations["Ada"].pr_curve["precision"]
    assert version.mean_ap == pytest.approx(np.mean([e.ap for e in evaluations.values()]))
    assert version.metrics["unknown_reject"] >= 0.8
    assert version.metrics["known_accept"] >= 0.8
    assert version.config["threshold"] == version.metrics["threshold"]
    assert (version_dir(version) / "svm.joblib").is_file()
    # Progress through the folds, a live series of per-fold mAP, and a log.
    assert [p[0] for p in ctx.metrics["fold mAP"]] == [1, 2, 3, 4, 5]
    assert any("Fold 5/5" in line for line in ctx.lines)

    # Loaded back the way inference loads it: the unlabelled faces of Ada and Bert are
    # recognised, the never-labelled strangers rejected.
    from viva.models import Face

    model = load_model(version)
    ada = Face.unpack_embeddings(f.embedding for f in world.unlabelled["Ada"])
    result = model.recognise(ada)
    assert result.accepted.all() and (result.index == 0).all()
    strangers = Face.unpack_embeddings(f.embedding for f in world.unknown_unlabelled)
    assert np.mean(~model.recognise(strangers).accepted) >= 0.8

    # A second run compares with the first.
    train_persons(FakeContext({"min_faces": 10, "max_faces": 20, "seed": 1}))
    second = ModelVersion.objects.get(kind=ModelVersion.Kind.PERSON, version=2)
    assert second.previous_id == version.pk and second.is_active


def test_threshold_is_adjustable_and_rates_follow(db, settings, tmp_path):
    settings.VIVA_MODELS_DIR = tmp_path / "models"
    make_world({"Ada": 12, "Bert": 12}, unknown_labelled=20)
    train_persons(FakeContext({"min_faces": 10}))
    version = ModelVersion.objects.get(kind=ModelVersion.Kind.PERSON)
    calibrated = version.config["threshold"]
    set_threshold(version, 0.0)
    version.refresh_from_db()
    assert version.config["threshold"] == 0.0
    assert version.config["calibrated_threshold"] == calibrated
    assert version.metrics["unknown_reject"] == 0.0 and version.metrics["known_accept"] == 1.0
    assert load_model(version).threshold == 0.0
    with pytest.raises(TrainingRefused):
        set_threshold(version, 1.5)
    curve = threshold_curve(version)
    assert len(curve["known"]) == 24 and len(curve["unknown"]) == 20


def test_fewer_than_two_eligible_persons_is_refused_clearly(db, settings):
    settings.VIVA_PERSON_MIN_FACES = 10
    make_world({"Ada": 12, "Bert": 4}, unknown_labelled=0, unknown_unlabelled=0)
    Category.objects.create(name="Carl", kind=Category.Kind.PERSON)
    with pytest.raises(TrainingError) as info:
        ds.load_dataset()
    text = str(info.value)
    assert "at least two persons" in text and "1 has enough" in text
    assert "Bert needs 6 more" in text and "Carl needs 10 more" in text
    with pytest.raises(TrainingRefused) as refused:
        start_person_training(None)
    assert "Bert needs 6 more" in str(refused.value)
    assert not Job.objects.filter(kind=JOB_KIND).exists()


def test_statuses_count_only_embedded_unambiguous_faces(db):
    world = make_world({"Ada": 5, "Bert": 3}, unknown_labelled=0, unknown_unlabelled=0)
    # A face labelled positive for both persons is a conflict: it counts for neither.
    from annotation.labels import save_face_labels
    from annotation.models import Label

    save_face_labels(world.persons["Bert"], [(world.labelled["Ada"][0].pk, Label.POSITIVE)])
    world.labelled["Ada"][1].__class__.objects.filter(pk=world.labelled["Ada"][1].pk).update(
        embedding=None
    )
    statuses = {s.name: s for s in ds.person_statuses(4)}
    assert statuses["Ada"].faces == 3 and statuses["Ada"].unembedded == 1
    assert statuses["Bert"].faces == 3 and not statuses["Bert"].eligible
    assert statuses["Bert"].missing == 1


def test_the_job_runs_once_and_is_idempotent(transactional_db, settings, tmp_path, users):
    settings.VIVA_MODELS_DIR = tmp_path / "models"
    make_world({"Ada": 12, "Bert": 12}, unknown_labelled=10)
    from viva.jobs.runner import run_job

    job = start_person_training(users["trainer"], {"min_faces": 10})
    assert job.queue == "default" and job.kind == JOB_KIND
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.result["version"] == 1 and "mAP" in job.result["summary"]
    assert job.metrics["fold mAP"]
    Job.objects.filter(pk=job.pk).update(status=Job.Status.QUEUED)
    assert run_job(job.pk) == "succeeded"
    assert ModelVersion.objects.filter(kind=ModelVersion.Kind.PERSON).count() == 1


def test_persons_page_refuses_clearly_and_trains_with_one_click(
    db, settings, tmp_path, client_for, django_capture_on_commit_callbacks
):
    settings.VIVA_MODELS_DIR = tmp_path / "models"
    settings.VIVA_PERSON_MIN_FACES = 10
    world = make_world({"Ada": 12, "Bert": 7}, unknown_labelled=10)
    client = client_for("trainer")
    url = reverse("training:persons")
    page = client.get(url)
    assert page.status_code == 200 and page.context["can_train"] is False
    assert "Bert needs 3 more" in page.content.decode()
    refused = client.post(url, {"action": "train"})
    assert refused.status_code == 200
    assert "Training was not started" in refused.content.decode()
    assert not Job.objects.filter(kind=JOB_KIND).exists()

    from annotation.labels import save_face_labels
    from annotation.models import Label

    save_face_labels(
        world.persons["Bert"], [(f.pk, Label.POSITIVE) for f in world.unlabelled["Bert"][:3]]
    )
    with django_capture_on_commit_callbacks(execute=False):
        started = client.post(url, {"action": "train"})
    job = Job.objects.get(kind=JOB_KIND)
    assert started.status_code == 302 and started["Location"].endswith(f"?job={job.pk}")
    from viva.jobs.runner import run_job

    assert run_job(job.pk) == "succeeded"
    page = client.get(url)
    assert page.context["active"].kind == "person"
    assert [r["name"] for r in page.context["rows"]] == ["Ada", "Bert"]
    assert page.context["chart"]["curve"]["unknown"]
    # The trainer adjusts the threshold; a bad value is refused with a message.
    bad = client.post(url, {"action": "threshold", "threshold": "abc"})
    assert "The threshold was not changed" in bad.content.decode()
    assert client.post(url, {"action": "threshold", "threshold": "0,9"}).status_code == 302
    assert ModelVersion.objects.get(kind="person").config["threshold"] == 0.9
    # The evaluation page shows person versions on request, concepts by default.
    evaluation = client.get(reverse("training:evaluation") + "?kind=person")
    assert evaluation.context["version"].kind == "person"
    assert {r["name"] for r in evaluation.context["rows"]} == {"Ada", "Bert"}
    assert client.get(reverse("training:evaluation")).context.get("version") is None
    # Annotators may not train.
    assert client_for("annotator").get(url).status_code == 403


def test_the_page_warns_about_random_embeddings(db, monkeypatch):
    from training.persons.service import embedder_warning

    world = make_world({"Ada": 3}, unknown_labelled=0, unknown_unlabelled=0, unlabelled_each=0)
    assert "3 of 3 faces were embedded with random weights" in embedder_warning()
    Face.objects.update(embedder="vggface2")
    monkeypatch.setattr("training.faces.embed.embedder_source", lambda: "vggface2")
    assert embedder_warning() is None
    monkeypatch.setattr("training.faces.embed.embedder_source", lambda: "missing")
    assert "missing" in embedder_warning()
    assert world.persons["Ada"].kind == "person"


def test_only_the_majority_embedders_faces_are_trained_on(db, settings, tmp_path):
    # Embeddings of other weights are not comparable: left out, counted, and the kept
    # embedder is stored for inference.
    from annotation.labels import save_face_labels
    from annotation.models import Label
    from tests.person_data import add_faces

    settings.VIVA_MODELS_DIR = tmp_path / "models"
    world = make_world({"Ada": 12, "Bert": 12}, unknown_labelled=10)
    odd = add_faces(
        world.videos["news"],
        sample_faces(identity_centres(1, 99)[0], 4, np.random.default_rng(3)),
        embedder="vggface2",
    )
    save_face_labels(world.persons["Ada"], [(f.pk, Label.POSITIVE) for f in odd])
    stranger = add_faces(world.videos["news"], identity_centres(1, 98), embedder="vggface2")
    save_face_labels(world.persons["Ada"], [(stranger[0].pk, Label.NEGATIVE)])

    data = ds.load_dataset(needed=10)
    assert data.embedder == "random" and data.other_embedder == 4
    assert data.embedders == {"random": 24, "vggface2": 4}
    assert not {f.pk for f in odd + stranger} & set(data.face_ids.tolist())
    assert stranger[0].pk not in data.unknown_face_ids.tolist()
    assert len(data.y) == 24 and len(data.unknown_x) == 10

    ctx = FakeContext({"min_faces": 10})
    train_persons(ctx)
    version = ModelVersion.objects.get(kind=ModelVersion.Kind.PERSON)
    assert version.config["embedder"] == "random"
    assert any("4 faces not embedded by 'random'" in line for line in ctx.lines)
    # Bert re-embedded by the other weights: the majority is theirs, Ada has too few.
    Face.objects.filter(pk__in=[f.pk for f in world.labelled["Bert"]]).update(embedder="vggface2")
    with pytest.raises(TrainingError, match="same weights"):
        ds.load_dataset(needed=10)
