"""Job handlers of this package (imported by the app's job_handlers module).

Thin wrappers around :mod:`.train`: they read ids and options from the job's params.
Idempotent: a job that already saved a version (a redelivered task after the save)
returns that version; otherwise the run continues from what earlier attempts of the same
job cached (ITQ feature chunks, deep hashing epoch checkpoints).
"""

from __future__ import annotations

from viva.jobs import JobContext, job_handler

FIT_JOB = "fit_hash_codes"
TRAIN_JOB = "train_hashing"

FIT_OPTIONS = (
    "sample_size",
    "network",
    "init",
    "image_size",
    "device",
    "batch_size",
    "num_workers",
    "cpu_threads",
    "seed",
)


def _already_done(ctx: JobContext) -> dict | None:
    from training.models import ModelVersion

    done = ModelVersion.objects.filter(job_id=ctx.job_id, kind=ModelVersion.Kind.HASHING).first()
    if done is None:
        return None
    ctx.log(f"This job already saved {done}; nothing to do.")
    _resume_indexing(ctx, done)
    return _result(done, f"Already saved as {done}.")


def _resume_indexing(ctx: JobContext, version) -> None:
    """A redelivered job whose first delivery died between saving the version and
    starting its indexing job: start it now (when the version is still active, has no
    codes, and no indexing job started since the version was saved)."""
    from retrieval.models import HashCode
    from retrieval.search.service import full_index_job

    if not version.is_active or HashCode.objects.filter(version=version).exists():
        return
    if full_index_job(since=version.created_at) is not None:
        return
    _index_archive(ctx, version)


def _result(version, summary: str) -> dict:
    return {
        "summary": summary,
        "model_version_id": version.pk,
        "version": version.version,
        "method": version.config.get("method"),
        "mAP": version.mean_ap,
        "active": version.is_active,
    }


def _user(ctx: JobContext):
    return getattr(ctx.job, "created_by", None)


@job_handler(FIT_JOB, queue="gpu", label="unsupervised hash codes")
def fit_hash_codes_job(ctx: JobContext) -> dict:
    from .train import fit_itq_model

    if (done := _already_done(ctx)) is not None:
        return done
    options = {k: ctx.params[k] for k in FIT_OPTIONS if ctx.params.get(k) is not None}
    version = fit_itq_model(ctx=ctx, user=_user(ctx), **options)
    _index_archive(ctx, version)
    return _result(
        version,
        f"Hashing model v{version.version} (unsupervised ITQ codes from "
        f"{version.metrics.get('sample_images')} archive images) is active; the archive "
        "is being indexed with it (a separate job).",
    )


def _index_archive(ctx: JobContext, version) -> None:
    """A new active hashing model makes the old codes useless: index the archive with it
    (the indexing job only encodes images without a code of the active model)."""
    from retrieval.search.service import start_index_job

    job, started = start_index_job({}, user=_user(ctx), title=f"Similarity index ({version})")
    if started:
        ctx.log(f"Started job #{job.pk} to index the archive with {version}.")
    else:
        ctx.log(f"Job #{job.pk}, queued already, indexes the archive with {version}.")


@job_handler(TRAIN_JOB, queue="gpu", label="deep hashing training")
def train_hashing_job(ctx: JobContext) -> dict:
    from .train import train_hashing_model

    if (done := _already_done(ctx)) is not None:
        return done
    params = dict(ctx.params)
    category_ids = params.pop("category_ids", None)
    folder = params.pop("folder", None)
    version = train_hashing_model(
        category_ids=category_ids, folder=folder, ctx=ctx, user=_user(ctx), **params
    )
    _index_archive(ctx, version)
    return _result(
        version,
        f"Hashing model v{version.version} (deep hashing) is active: held-out mAP@100 "
        f"{100 * (version.mean_ap or 0):.1f} %; the archive is being indexed with it "
        "(a separate job).",
    )
