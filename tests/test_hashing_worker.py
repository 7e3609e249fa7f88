"""The unsupervised hash-code job through a real Celery worker: a handful of stills give
an active hashing version whose encoder works; running the job again changes nothing."""

from __future__ import annotations

import pytest

from retrieval.hashing import service
from retrieval.hashing.encoder import load_encoder
from retrieval.hashing.jobs import fit_hash_codes_job
from retrieval.models import HashCode
from tests.conftest import wait_for
from tests.test_grid_views import make_stills
from training.models import ModelVersion
from training.registry import active_version
from viva.jobs import JobContext
from viva.models import Job


@pytest.mark.worker
@pytest.mark.slow
def test_fit_job_through_a_worker(celery_worker, users, tmp_path):
    make_stills(8, tmp_path)
    job = service.start_fit(
        users["trainer"],
        {
            "sample_size": 100,
            "network": "tiny-cnn",
            "init": "random",
            "image_size": 64,
            "device": "cpu",
            "cpu_threads": 1,
        },
    )
    done = wait_for(
        lambda: Job.objects.filter(pk=job.pk, status__in=Job.FINISHED).first(), timeout=120
    )
    assert done.status == Job.Status.SUCCEEDED, (done.error, celery_worker.output()[-3000:])
    version = active_version("hashing")
    assert version is not None and version.job_id == job.pk
    assert version.config["method"] == "itq"
    assert len(version.config["permutation"]) == 256
    assert done.result["model_version_id"] == version.pk
    assert "being indexed" in done.result["summary"]
    assert "random" in done.log_tail  # the log says which weights the backbone started from

    # A new hashing model indexes the archive with it (a separate job, same worker).
    indexed = wait_for(
        lambda: Job.objects.filter(kind="index_images", status__in=Job.FINISHED).first(),
        timeout=120,
    )
    assert indexed.status == Job.Status.SUCCEEDED, indexed.error
    assert HashCode.objects.filter(version=version).count() == 8

    encoder = load_encoder()
    assert encoder.version.pk == version.pk

    # idempotent: the same job again returns the saved version and stores nothing new
    again = fit_hash_codes_job(JobContext(Job.objects.get(pk=job.pk)))
    assert again["model_version_id"] == version.pk
    assert ModelVersion.objects.filter(kind="hashing").count() == 1
