"""Job handler of similarity indexing (issue 6, item 3): a thin wrapper around
:func:`retrieval.search.indexing.index_images`.

Params: ``image_ids`` (optional: only these, e.g. from the ``images_added`` signal),
``chunk_size``, and ``fit_if_missing`` (the "build the index" button: without a hashing
model, fit the unsupervised ITQ codes first, in the same job, so one click and one
progress bar take an empty installation to a searchable archive); ``network``, ``init``,
``sample_size`` and ``device`` are passed to that fit when given.
"""

from __future__ import annotations

from viva.jobs import JobContext, JobError, job_handler

from .service import JOB_KIND, active_version


@job_handler(JOB_KIND, queue="gpu", label="similarity indexing")
def index_images_job(ctx: JobContext) -> dict:
    """Idempotent: only images without a code are encoded, so a rerun continues."""
    from annotation.similarity import IndexNotBuilt

    from .indexing import DEFAULT_CHUNK_SIZE, index_images

    version = active_version()
    if version is None:
        if not ctx.params.get("fit_if_missing"):
            raise JobError(
                "There is no hash-code model yet; fit one on the “Hash codes” page, or build "
                "the index from the similarity search page."
            )
        from ..hashing.train import fit_itq_model

        ctx.log("No hashing model yet: fitting unsupervised (ITQ) hash codes first.")
        ctx.progress(0, None, note="Fitting hash codes …")
        # Optional fit parameters (tests and demos use a tiny network).
        options = {
            key: ctx.params[key]
            for key in ("network", "init", "sample_size", "device")
            if ctx.params.get(key)
        }
        version = fit_itq_model(ctx=ctx, user=ctx.job.created_by, **options)
        ctx.log(f"Hashing model v{version.version} is ready; indexing the archive.")
    image_ids = ctx.params.get("image_ids")
    try:
        report = index_images(
            version,
            image_ids=[int(i) for i in image_ids] if image_ids else None,
            chunk_size=int(ctx.params.get("chunk_size") or DEFAULT_CHUNK_SIZE),
            ctx=ctx,
        )
    except IndexNotBuilt as exc:
        raise JobError(str(exc)) from exc
    return report.as_dict()
