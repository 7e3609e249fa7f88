"""The face-indexing job (issue 7): ``index_faces`` over the whole archive, some
collections, or a list of images — a thin wrapper around
:func:`training.faces.pipeline.index_faces`.

Chunked by image id ranges (ascending ids, ``CHUNK`` images each), resumable because
every processed image gets ``faces_scanned_at`` (also when it has no face), cancellable
between batches, with progress (images), an ETA from the job's progress and a
``faces/s`` metric series per chunk. A rescan remembers when the job was created, so a
resumed rescan continues with the images not rescanned since.
"""

from __future__ import annotations

from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from viva.jobs import JobContext, JobError, job_handler, start_job
from viva.models import Image, Job

JOB_KIND = "index_faces"
CHUNK = 256


def start_face_indexing(
    *,
    image_ids: list[int] | None = None,
    collection_ids: list[int] | None = None,
    user=None,
    rescan: bool = False,
    device: str | None = None,
    category_id: int | None = None,
) -> Job:
    """Enqueue a face-indexing job (none of ``image_ids``/``collection_ids``: the whole
    archive). Runs on the ``gpu`` queue once the surrounding transaction commits.
    ``category_id``: the person whose acquired images these are (the clusters page shows
    that job's progress)."""
    params: dict = {}
    if category_id is not None:
        params["category_id"] = int(category_id)
    if image_ids is not None:
        params["image_ids"] = sorted({int(i) for i in image_ids})
    if collection_ids:
        params["collection_ids"] = sorted({int(c) for c in collection_ids})
    if rescan:
        params["rescan_before"] = timezone.now().isoformat()
    if device:
        params["device"] = device
    if image_ids is not None:
        n = len(params["image_ids"])
        title = f"Face indexing of {n} image{'s' if n != 1 else ''}"
    elif collection_ids:
        title = f"Face indexing of {len(params['collection_ids'])} collection(s)"
    else:
        title = "Face indexing of the archive"
    return start_job(JOB_KIND, params, user=user, title=title)


def scope(params: dict) -> QuerySet:
    """The images a job with these parameters covers."""
    images = Image.objects.all()
    if params.get("image_ids") is not None:
        images = images.filter(pk__in=[int(i) for i in params["image_ids"]])
    if params.get("collection_ids"):
        images = images.filter(collection_id__in=[int(c) for c in params["collection_ids"]])
    return images


def pending(images: QuerySet, rescan_before=None) -> QuerySet:
    """Images still to do: never scanned, or (rescan) scanned before the job began."""
    todo = Q(faces_scanned_at__isnull=True)
    if rescan_before is not None:
        todo |= Q(faces_scanned_at__lt=rescan_before)
    return images.filter(todo)


@job_handler(JOB_KIND, queue="gpu", label="face indexing")
def index_faces_job(ctx: JobContext) -> dict:
    """Idempotent: images done by an earlier attempt are skipped."""
    from training.devices import local_device_exists, normalize_device

    from .embed import embedder_source
    from .pipeline import index_faces

    rescan_before = None
    if ctx.params.get("rescan_before"):
        rescan_before = parse_datetime(ctx.params["rescan_before"])
        if rescan_before is None:
            raise JobError("The job's rescan time is not a valid date.")
    device = normalize_device(ctx.params.get("device") or "auto")
    if not local_device_exists(device):
        raise JobError(
            f"The device {device} does not exist on the worker that took this job "
            f"({ctx.job.worker or 'unknown'})."
        )
    ctx.set_device(device)
    images = scope(ctx.params)
    total = images.count()
    todo = pending(images, rescan_before)
    remaining = todo.count()
    ctx.progress(total - remaining, total, note="Loading the face models …")
    ctx.log(
        f"Face indexing on {device}: {total} images, {remaining} to scan"
        f"{' (rescan)' if rescan_before else ''}; embeddings from "
        f"{_weights_text(embedder_source())}."
    )
    totals = {
        "scanned": 0,
        "faces": 0,
        "rejected": 0,
        "unreadable": 0,
        "too_large": 0,
        "kept": 0,
        "reembedded": 0,
        "predictions_dropped": 0,
        "seconds": 0.0,
    }
    last_id = 0
    chunk_no = 0
    while True:
        ctx.check_cancelled()
        ids = list(todo.filter(pk__gt=last_id).order_by("pk").values_list("pk", flat=True)[:CHUNK])
        if not ids:
            break
        last_id = ids[-1]
        chunk_no += 1
        ctx.note = f"Scanning images {ids[0]}–{ids[-1]} …"
        stats = index_faces(
            ids,
            ctx=ctx,
            rescan=rescan_before is not None,
            rescan_before=rescan_before,
            device=device,
        )
        for key in totals:
            totals[key] += stats[key]
        elapsed = round(totals["seconds"], 2)
        if stats["seconds"] > 0:
            ctx.metric("faces/s", elapsed, stats["faces"] / stats["seconds"])
            ctx.metric("images/s", elapsed, stats["scanned"] / stats["seconds"])
    seconds = totals["seconds"]
    fps = totals["faces"] / seconds if seconds else 0.0
    ips = totals["scanned"] / seconds if seconds else 0.0
    summary = (
        f"Scanned {totals['scanned']} images in {chunk_no} chunk(s): {totals['faces']} faces "
        f"stored, {totals['rejected']} below the quality filters, {totals['unreadable']} "
        f"unreadable and {totals['too_large']} too large files (left unscanned)"
        f"{_kept_text(totals)} ({ips:.1f} images/s, {fps:.1f} faces/s)."
    )
    ctx.log(summary)
    return {
        "summary": summary,
        "total": total,
        **{k: v for k, v in totals.items() if k != "seconds"},
        "seconds": round(seconds, 2),
        "faces_per_s": round(fps, 3),
        "images_per_s": round(ips, 3),
        "embedder": embedder_source(),
    }


def _kept_text(totals: dict) -> str:
    if not totals["kept"]:
        return ""
    return f"; {totals['kept']} labelled faces kept, {totals['reembedded']} of them embedded again"


def _weights_text(source: str) -> str:
    if source == "vggface2":
        return "the VGGFace2 weights"
    if source == "random":
        return "RANDOM weights (recognition is meaningless)"
    return "no weights (the job will fail unless they can be downloaded)"
