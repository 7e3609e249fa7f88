"""Job handlers of the acquisition pages: downloading labelled web images, large CSV imports.

Handlers stay thin (load ids, call a service in :mod:`annotation.acquisition` or
:mod:`annotation.sequence_import`) and are idempotent: a resumed or redelivered job skips
what is already stored and saves labels that are already set as "unchanged".
"""

from __future__ import annotations

from pathlib import Path

from django.urls import NoReverseMatch, reverse

from viva.jobs import JobContext, JobError, job_handler

from .acquisition import download_labelled_results
from .models import Category
from .sequence_import import SequenceImportError, import_sequences


def _category(ctx: JobContext) -> Category:
    try:
        return Category.objects.get(pk=ctx.params["category_id"])
    except (Category.DoesNotExist, KeyError):
        raise JobError("The category no longer exists; nothing was stored.") from None


@job_handler("download_web_images", queue="io", label="web image download")
def download_web_images_job(ctx: JobContext) -> dict:
    """Fetch the web results an annotator labelled, store them with origins, save labels."""
    category = _category(ctx)
    items = list(ctx.params.get("items") or [])
    user = ctx.job.created_by
    ctx.set_total(len(items), note=f"{len(items)} image(s) for “{category.name}”")

    def on_progress(done: int, url: str) -> None:
        ctx.progress(done, note=url[:300])

    report = download_labelled_results(category, items, user=user, on_progress=on_progress)
    result = report.as_dict()
    for error in report.errors:
        ctx.log(f"{error['url']}: {error['error']}")
    ctx.log(result["summary"])
    result["category_id"] = category.pk
    result.update(_label_link())
    return result


@job_handler("sequence_import", queue="default", label="sequence import")
def sequence_import_job(ctx: JobContext) -> dict:
    """Import a large sequence CSV (small ones are imported inside the request)."""
    category = _category(ctx)
    path = Path(ctx.params.get("path", ""))
    name = ctx.params.get("filename") or path.name
    try:
        content = path.read_bytes()
    except OSError:
        raise JobError(f"The uploaded file {name} is no longer there; upload it again.") from None
    ctx.set_total(1, note=name)
    try:
        summary = import_sequences(content, category, user=ctx.job.created_by)
    except SequenceImportError as exc:
        lines = [str(e) for e in exc.errors]
        for line in lines:
            ctx.log(line)
        path.unlink(missing_ok=True)  # resuming cannot fix the file; a new upload can
        more = f" (and {len(lines) - 10} more, see the log)" if len(lines) > 10 else ""
        raise JobError(f"{name} was not imported: " + "; ".join(lines[:10]) + more) from None
    result = summary.as_dict()
    ctx.log(result["summary"])
    for warning in result["warnings"][:50]:
        ctx.log(warning)
    ctx.progress(1)
    path.unlink(missing_ok=True)
    result["category_id"] = category.pk
    result.update(_label_link())
    return result


def _label_link() -> dict:
    """The job page's button to where the new candidates are labelled."""
    try:
        return {"url": reverse("annotation:label"), "url_label": "Label the candidates"}
    except NoReverseMatch:
        return {}


from . import face_jobs as _face_jobs  # noqa: E402,F401 - registers "cluster_faces"
