"""Concept training as a job: refusals, and a real run through a Celery worker on
synthetic coloured shapes (tiny network, random init, 64 px) that must reach a
validation mAP ≥ 0.9 within a minute on 2 CPU cores."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from django.conf import settings
from sklearn.metrics import average_precision_score

from annotation.labels import save_labels
from annotation.models import Category
from tests.conftest import wait_for
from training import trainer as trainer_module
from training.errors import TrainingError, TrainingRefused
from training.losses import IGNORE, POS
from training.models import Evaluation, ModelVersion
from training.registry import active_version, read_val_scores
from training.scoring import load_network, score_files
from training.services import JOB_KIND, start_training
from training.synthetic import make_shapes_archive
from training.trainer import NullContext, train
from viva.models import Collection, Image, Job

FAST = {
    "network": "tiny-cnn",
    "image_size": 64,
    "init": "random",
    "device": "cpu",
    "batch_size": 16,
    "epochs_phase1": 8,
    "epochs_phase2": 2,
    "min_positives": 20,
    "num_workers": 1,
    "cpu_threads": 1,
    "seed": 1,
}


def _broken_positive(category: Category) -> Image:
    """An image whose file is corrupt, labelled positive: skipped, listed, not fatal."""
    rel = "images/broken/corrupt.jpg"
    path = settings.MEDIA_ROOT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    image = Image.objects.create(
        collection=Collection.objects.get(name="Synthetic shapes"),
        file=rel,
        sha256="broken",
        width=96,
        height=72,
    )
    save_labels(category, [(image.pk, 1)])
    return image


# --- refusals: a clear message and no job ------------------------------------------------
def test_refused_without_enough_positives(users):
    Category.objects.create(name="red circle")
    with pytest.raises(TrainingRefused, match="at least 100 positive"):
        start_training(users["trainer"], {"device": "cpu"})
    assert not Job.objects.exists()


def test_refused_for_a_vanished_device_a_busy_device_and_bad_options(users):
    make_shapes_archive(8)
    options = {"device": "cpu", "min_positives": 5}
    with pytest.raises(TrainingRefused, match="cuda:7 is not available"):
        start_training(users["trainer"], {**options, "device": "cuda:7"})
    with pytest.raises(TrainingRefused, match="batch size"):
        start_training(users["trainer"], {**options, "batch_size": 0})
    with pytest.raises(TrainingRefused, match="Unknown training option"):
        start_training(users["trainer"], {**options, "colour": "red"})
    holder = Job.objects.create(kind="infer_concepts", queue="gpu", status="running", device="cpu")
    with pytest.raises(TrainingRefused, match=f"busy with .*job {holder.pk}"):
        start_training(users["trainer"], options)
    assert list(Job.objects.all()) == [holder]


def test_refused_when_start_weights_cannot_be_had(users, settings, tmp_path, monkeypatch):
    """Downloads off and no ImageNet file here: refused before a job exists (the worker
    could only fail). A local file, random init, or downloads allowed: accepted."""
    from training import weights

    make_shapes_archive(8)
    settings.VIVA_WEIGHTS_DIR = tmp_path / "weights"
    settings.VIVA_WEIGHTS_DIR.mkdir()
    settings.VIVA_ALLOW_WEIGHT_DOWNLOAD = False
    monkeypatch.setattr(weights, "hub_checkpoint_dir", lambda: tmp_path / "hub" / "checkpoints")
    options = {"device": "cpu", "min_positives": 5, "network": "efficientnet-b0"}
    with pytest.raises(TrainingRefused, match="downloading is switched off") as info:
        start_training(users["trainer"], options)
    assert str(settings.VIVA_WEIGHTS_DIR) in str(info.value)
    assert "efficientnet-b0.pth" in str(info.value) and "random" in str(info.value)
    # A test network has no ImageNet weights at all: starting it "pretrained" cannot work.
    with pytest.raises(TrainingRefused, match="no pretrained weights"):
        start_training(users["trainer"], {**options, "network": "tiny-cnn"})
    assert not Job.objects.exists()

    def accepted(**extra) -> None:
        job = start_training(users["trainer"], {**options, **extra})
        assert job.params["network"] == "efficientnet-b0"
        job.delete()  # frees the device for the next start

    accepted(init="random")
    (settings.VIVA_WEIGHTS_DIR / "efficientnet-b0.pth").write_bytes(b"weights")
    accepted()
    (settings.VIVA_WEIGHTS_DIR / "efficientnet-b0.pth").unlink()
    settings.VIVA_ALLOW_WEIGHT_DOWNLOAD = True
    accepted()  # the worker downloads the file (and says where to put it when offline)


def test_out_of_memory_says_use_a_smaller_batch(users, monkeypatch, settings, tmp_path):
    settings.VIVA_MODELS_DIR = tmp_path
    make_shapes_archive(8)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer_module, "train_one_epoch", oom)
    with pytest.raises(TrainingError, match=r"smaller batch size \(e.g. 8\)"):
        train(NullContext(), {**FAST, "min_positives": 5, "num_workers": 0})
    assert not ModelVersion.objects.exists()


# --- the real thing ----------------------------------------------------------------------
@pytest.mark.worker
@pytest.mark.slow
def test_training_job_through_a_worker(celery_worker, users):
    shapes = make_shapes_archive(40, seed=3)
    broken = _broken_positive(shapes["categories"]["red circle"])
    trainer = users["trainer"]

    # Cancel works: a long run stops at the next step and stores nothing.
    long_job = start_training(trainer, {**FAST, "epochs_phase1": 200})
    with pytest.raises(TrainingRefused, match="busy"):
        start_training(trainer, FAST)  # one run per device
    wait_for(lambda: Job.objects.get(pk=long_job.pk).progress > 0, timeout=60)
    from viva.jobs import cancel_job

    cancel_job(long_job)
    wait_for(lambda: Job.objects.get(pk=long_job.pk).status == Job.Status.CANCELLED, timeout=60)
    assert not ModelVersion.objects.exists()

    # A full run.
    job = start_training(trainer, FAST)
    assert job.kind == JOB_KIND and job.queue == "gpu" and job.device == "cpu"
    job = wait_for(
        lambda: (j := Job.objects.get(pk=job.pk)).status in Job.FINISHED and j, timeout=180
    )
    assert job.status == Job.Status.SUCCEEDED, job.error + "\n" + job.log_tail
    seconds = (job.finished_at - job.started_at).total_seconds()
    assert seconds < 60, f"training took {seconds:.1f} s"
    assert job.progress == job.total > 0

    # Live monitoring series for the page.
    for series in ("train loss", "val mAP", "learning rate", "images/s", "val loss"):
        assert job.metrics.get(series), series
    assert "cpu %" in job.metrics  # psutil
    assert f"#{broken.pk}" in job.log_tail and "Skipped unreadable image" in job.log_tail
    assert "random initialisation" in job.log_tail

    # Registry: a new active version with mAP ≥ 0.9.
    version = active_version()
    assert version is not None and version.job_id == job.pk
    assert job.result["model_version_id"] == version.pk
    assert version.mean_ap >= 0.9, job.log_tail
    assert version.weights_source["source"] == "random"
    assert [c["name"] for c in version.class_map] == list(shapes["categories"])
    assert version.metrics["skipped_images"][0]["image_id"] == broken.pk

    # Evaluation rows are scikit-learn's AP on the stored validation scores …
    scores = read_val_scores(version)
    for k, entry in enumerate(version.class_map):
        evaluation = Evaluation.objects.get(model_version=version, category_id=entry["id"])
        t, s = scores["targets"][:, k], scores["logits"][:, k]
        keep = t != IGNORE
        assert evaluation.ap == pytest.approx(
            average_precision_score(t[keep] == POS, s[keep]), abs=1e-12
        )
        assert evaluation.n_val_pos == int((t == POS).sum()) > 0
        assert evaluation.pr_curve["precision"] and evaluation.pr_curve["recall"]
    assert version.mean_ap == pytest.approx(np.mean([e.ap for e in version.evaluations.all()]))

    # … and the saved model, loaded the way inference loads it, gives the same scores.
    model, pre = load_network(version)
    files = dict(
        Image.objects.filter(pk__in=scores["image_ids"].tolist()).values_list("pk", "file")
    )
    readable, logits = score_files(model, pre, [files[i] for i in scores["image_ids"]])
    assert len(readable) == len(scores["image_ids"])
    np.testing.assert_allclose(logits, scores["logits"], atol=1e-4)

    # Running the same job again (a redelivered task) does not train twice.
    from viva.jobs.runner import run_job

    before = time.monotonic()
    Job.objects.filter(pk=job.pk).update(status=Job.Status.QUEUED)
    assert run_job(job.pk) == "succeeded"
    assert time.monotonic() - before < 10
    assert ModelVersion.objects.count() == 1
