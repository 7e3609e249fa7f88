"""Concept inference through real Celery workers (issue 5): a tiny model trained on
synthetic shapes scores synthetic keyframes; two jobs share the run; a worker is killed
mid-run and a resumed job on a new worker completes it — every keyframe scored exactly
once, the run published only at the end."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone
from sklearn.metrics import average_precision_score

from retrieval import inference as inf
from retrieval.models import InferenceChunk, InferenceRun, Prediction
from tests.conftest import WorkerProcess, wait_for
from tests.test_inference import make_keyframes
from training.registry import active_version
from training.synthetic import make_shapes_archive
from training.trainer import NullContext, train
from viva.jobs import resume_job
from viva.models import Job

FAST = {
    "network": "tiny-cnn",
    "image_size": 64,
    "init": "random",
    "device": "cpu",
    "batch_size": 16,
    "epochs_phase1": 8,
    "epochs_phase2": 2,
    "min_positives": 20,
    "num_workers": 0,
    "cpu_threads": 1,
    "seed": 1,
}


def finished(job_id: int) -> Job | None:
    job = Job.objects.get(pk=job_id)
    return job if job.status in Job.FINISHED else None


@pytest.mark.worker
@pytest.mark.slow
def test_inference_jobs_through_workers(celery_worker, users, settings):
    # The worker reads the same models folder (VAR_DIR/models): no override here.
    settings.VIVA_TRAIN_NUM_WORKERS = 0
    make_shapes_archive(30, seed=3)
    train(NullContext(), FAST)
    version = active_version()
    assert version is not None and version.mean_ap >= 0.8
    frames = make_keyframes(240, name="Archive", seed=7, broken=2)
    trainer = users["trainer"]

    # A run on one worker, killed after a few chunks.
    job = inf.start_inference(trainer, {"device": "cpu", "chunk_size": 4, "workers": 0})
    run = InferenceRun.objects.get()
    wait_for(lambda: run.chunks.filter(status="done").count() >= 3 or finished(job.pk), timeout=90)
    assert not finished(job.pk), Job.objects.get(pk=job.pk).log_tail
    celery_worker.kill()
    assert not InferenceRun.objects.get(pk=run.pk).is_published
    done_before = run.chunks.filter(status="done").count()
    assert done_before < run.n_chunks or run.chunks.count() > done_before
    # What the reaper does after the heartbeat timeout, without waiting 2 minutes:
    Job.objects.filter(pk=job.pk).update(status=Job.Status.FAILED)
    InferenceChunk.objects.filter(run=run, status="claimed").update(
        heartbeat_at=timezone.now() - timedelta(hours=1)
    )

    # A new worker resumes the job, and a second job joins the same run.
    second = WorkerProcess("inference-resume")
    try:
        resume_job(Job.objects.get(pk=job.pk))
        helper = inf.add_worker(trainer, run, "cpu", {"chunk_size": 4, "workers": 0})
        jobs = [wait_for(lambda j=j: finished(j.pk), timeout=180) for j in (job, helper)]
    finally:
        second.stop()
    for j in jobs:
        assert j.status == Job.Status.SUCCEEDED, j.error + "\n" + j.log_tail
    run.refresh_from_db()
    assert run.status == "complete" and run.is_published
    assert (run.n_scored, run.n_skipped, run.n_images) == (238, 2, 240)
    assert run.chunks.exclude(status="done").count() == 0

    # Every readable keyframe exactly once per concept at or above the floor; none twice.
    rows = list(Prediction.objects.filter(run=run).values_list("image_id", "category_id", "score"))
    assert len(rows) == len({(i, c) for i, c, _ in rows}) == run.n_predictions
    assert {i for i, _, _ in rows} <= {f.pk for f in frames[:-2]}
    assert all(s >= run.score_floor for _, _, s in rows)
    broken = {f.pk for f in frames[-2:]}
    assert not broken & {i for i, _, _ in rows}
    log = "\n".join(Job.objects.filter(kind=inf.JOB_KIND).values_list("log_tail", flat=True))
    assert f"Skipped unreadable keyframe #{frames[-1].pk}" in log

    # The trained model ranks the keyframes well (AP per concept over stored scores).
    scores = {(i, c): s for i, c, s in rows}
    for entry in version.class_map:
        y = np.array([entry["name"] in f.shown for f in frames[:-2]])
        s = np.array([scores.get((f.pk, entry["id"]), 0.0) for f in frames[:-2]])
        assert average_precision_score(y, s) >= 0.8, entry["name"]
    assert Job.objects.get(pk=job.pk).metrics.get("images/s")
