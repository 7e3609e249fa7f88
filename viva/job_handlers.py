"""Job handlers of the core: importing videos and still images."""

from __future__ import annotations

import shutil
from pathlib import Path

from .ingest.importer import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    ImportFailed,
    ImportReport,
    expand_paths,
    import_image,
    import_video,
)
from .ingest.shots import DetectionCancelled
from .jobs import JobCancelled, JobContext, JobError, job_handler
from .models import Collection, Image
from .signals import send_images_added

STEPS_PER_FILE = 1000


def _finish(ctx: JobContext, report: ImportReport, files: list[Path]) -> dict:
    for folder in ctx.params.get("cleanup_dirs", []):
        shutil.rmtree(folder, ignore_errors=True)
    new_ids = [e["image_id"] for e in report.imported if "image_id" in e]
    video_ids = [e["video_id"] for e in report.imported if "video_id" in e]
    if video_ids:
        new_ids += list(Image.objects.filter(video_id__in=video_ids).values_list("pk", flat=True))
    send_images_added(new_ids, source="import")
    result = report.as_dict()
    ctx.log(result["summary"])
    if files and len(report.errors) == len(files):
        lines = "; ".join(f"{e['file']}: {e['error']}" for e in report.errors[:10])
        raise JobError(f"Nothing could be imported. {lines}")
    return result


def _collection(ctx: JobContext) -> Collection:
    try:
        return Collection.objects.get(pk=ctx.params["collection_id"])
    except Collection.DoesNotExist:
        raise JobError("The target collection no longer exists.") from None


@job_handler("import_videos", queue="io", label="video import")
def import_videos_job(ctx: JobContext) -> dict:
    collection = _collection(ctx)
    files = expand_paths(ctx.params.get("paths", []), VIDEO_SUFFIXES)
    names = ctx.params.get("names", {})
    ctx.set_total(len(files) * STEPS_PER_FILE)
    report = ImportReport()
    for i, path in enumerate(files):
        label = names.get(str(path), path.name)
        ctx.progress(i * STEPS_PER_FILE, note=f"{label} ({i + 1}/{len(files)})")

        def on_progress(fraction: float, base: int = i * STEPS_PER_FILE) -> None:
            ctx.progress(base + int(fraction * STEPS_PER_FILE))

        try:
            status, video = import_video(
                path,
                collection,
                original_name=label,
                on_progress=on_progress,
                should_stop=lambda: ctx.cancel_requested,
            )
        except DetectionCancelled:
            raise JobCancelled() from None
        except ImportFailed as exc:
            # Detection messages start with the file's own name; the report names it already.
            message = str(exc).removeprefix(f"{path.name}: ")
            report.errors.append({"file": label, "error": message})
            ctx.log(f"{label}: failed: {message}")
            continue
        except FileNotFoundError:
            report.errors.append({"file": label, "error": "The file does not exist."})
            continue
        entry = {"file": label, "video_id": video.pk, "title": video.title}
        if status == "skipped":
            report.skipped.append(entry)
            ctx.log(f"{label}: already in the archive as “{video.title}”.")
        else:
            report.imported.append(entry)
            ctx.log(f"{label}: {video.shots.count()} shots, {video.keyframes.count()} keyframes.")
        ctx.check_cancelled()
    return _finish(ctx, report, files)


@job_handler("import_images", queue="io", label="image import")
def import_images_job(ctx: JobContext) -> dict:
    collection = _collection(ctx)
    files = expand_paths(ctx.params.get("paths", []), IMAGE_SUFFIXES)
    names = ctx.params.get("names", {})
    ctx.set_total(len(files))
    report = ImportReport()
    for i, path in enumerate(files):
        label = names.get(str(path), path.name)
        try:
            status, image = import_image(path, collection, original_name=label)
        except ImportFailed as exc:
            report.errors.append({"file": label, "error": str(exc)})
        except FileNotFoundError:
            report.errors.append({"file": label, "error": "The file does not exist."})
        else:
            getattr(report, "imported" if status == "imported" else "skipped").append(
                {"file": label, "image_id": image.pk}
            )
        ctx.progress(i + 1, note=label)
    return _finish(ctx, report, files)


@job_handler("worker_check", label="worker check")
def worker_check_job(ctx: JobContext) -> dict:
    """Walk through ``steps`` short steps: shows that a worker picks up jobs, reports
    progress and metrics, and honours cancel (the jobs page has a button for it)."""
    import time

    steps = max(1, min(int(ctx.params.get("steps", 10)), 10_000))
    delay = max(0.0, min(float(ctx.params.get("delay", 0.2)), 5.0))
    start = int(ctx.params.get("resume_from", 0))
    ctx.set_total(steps)
    for step in range(start, steps):
        time.sleep(delay)
        ctx.metric("steps per second", step + 1, 1.0 / delay if delay else 0.0)
        ctx.progress(step + 1, note=f"step {step + 1} of {steps}")
    ctx.log(f"Worker check finished {steps} steps.")
    return {"summary": f"The worker ran {steps} steps."}
