"""Job handlers of the exports: ``export_segments`` and ``export_dataset`` (queue ``io``).

Imported by ``retrieval.job_handlers`` (job autodiscovery imports only that module).
Both are idempotent: a rerun rewrites the same zip (written to a temporary file and
renamed, so a half-written file is never offered for download).
"""

from __future__ import annotations

from collections import defaultdict
from itertools import islice

from django.conf import settings
from django.http import QueryDict
from django.urls import reverse

from annotation.models import Annotation, Category
from viva.jobs import JobContext, JobError, job_handler
from viva.models import Face, Image, Shot, Video

from .export import (
    KeyframeRow,
    VideoSegments,
    export_dir,
    faces_csv,
    frame_gap_ms,
    segments_of_video,
    write_dataset_zip,
    write_segments_zip,
)
from .models import Prediction
from .query import Filters, parse_filters, parse_query
from .ranking import QueryError, category_hits, combined_hits, published_run, published_runs

VIDEO_BATCH = 200


def _describe(query, names: dict[int, str]) -> str:
    parts = []
    for term in query.terms:
        name = names.get(term.category_id, f"#{term.category_id}")
        parts.append(f"{term.op.upper()} {name} ≥ {term.min_score:g}")
    return " ".join(parts).removeprefix("AND ").removeprefix("OR ")


def _batched(iterable, n):
    it = iter(iterable)
    while batch := list(islice(it, n)):
        yield batch


@job_handler("export_segments", queue="io", label="segment export")
def export_segments_job(ctx: JobContext) -> dict:
    params = ctx.params
    threshold = float(params.get("threshold", 0.7))
    merge_shots = bool(params.get("merge_shots", True))
    person_run = None
    if params.get("category_id"):
        category = Category.objects.filter(pk=params["category_id"]).first()
        if category is None:
            raise JobError("The category no longer exists.")
        run = published_run(category.kind)
        if run is None:
            raise JobError(f"No published {category.kind} model: run inference first.")
        label = category.name
        given = parse_filters(QueryDict(params.get("filters", "")))
        filters = Filters(
            collection_id=given.collection_id,
            title=given.title,
            year_from=given.year_from,
            year_to=given.year_to,
        )
        hits = category_hits(run.pk, category.pk, threshold, filters)
        if category.kind == Category.Kind.PERSON:
            person_run = run
    else:
        query = parse_query(QueryDict(params.get("query", "")))
        found = Category.objects.filter(pk__in=[t.category_id for t in query.terms])
        names = dict(found.values_list("pk", "name"))
        query = query.with_kinds(dict(found.values_list("pk", "kind")))
        label = _describe(query, names)
        try:
            hits = combined_hits(query, published_runs(), threshold)
        except QueryError as exc:
            raise JobError(str(exc)) from None
    ctx.log(f"Collecting keyframes of “{label}” scoring at least {threshold:.0%} …")
    by_video: dict[int, dict[int, float]] = defaultdict(dict)
    shot_of: dict[int, int | None] = {}
    time_of: dict[int, int] = {}
    n_hits = 0
    for hit in hits:
        if hit.video_id is None:
            continue  # stills have no time line
        by_video[hit.video_id][hit.image_id] = hit.score
        shot_of[hit.image_id] = hit.shot_id
        time_of[hit.image_id] = hit.time_ms or 0
        n_hits += 1
    ctx.log(f"{n_hits} keyframes in {len(by_video)} video{'s' * (len(by_video) != 1)}.")
    video_ids = sorted(by_video)
    ctx.set_total(len(video_ids), note="Merging keyframes into segments")
    results: list[VideoSegments] = []
    for done, batch in enumerate(_batched(video_ids, VIDEO_BATCH)):
        videos = {
            v["id"]: v for v in Video.objects.filter(pk__in=batch).values("id", "title", "fps")
        }
        shot_ids = {shot_of[i] for v in batch for i in by_video[v] if shot_of[i]}
        shots = {
            s["id"]: s
            for s in Shot.objects.filter(pk__in=shot_ids).values(
                "id", "video_id", "start_ms", "end_ms"
            )
        }
        frames = defaultdict(list)
        for image_id, shot_id, time_ms in Image.objects.filter(shot_id__in=shot_ids).values_list(
            "id", "shot_id", "time_ms"
        ):
            frames[shots[shot_id]["video_id"]].append(KeyframeRow(image_id, shot_id, time_ms or 0))
        for video_id in batch:
            video = videos.get(video_id)
            if video is None:
                continue
            scores = by_video[video_id]
            keyframes = frames[video_id] + [
                KeyframeRow(i, None, time_of[i]) for i in scores if not shot_of[i]
            ]
            video_shots = {
                sid: (s["start_ms"], s["end_ms"])
                for sid, s in shots.items()
                if s["video_id"] == video_id
            }
            segments = segments_of_video(
                video_shots,
                keyframes,
                scores,
                merge_shots=merge_shots,
                gap_ms=frame_gap_ms(video["fps"]),
            )
            results.append(VideoSegments(video_id, video["title"], segments))
        ctx.progress(min(len(video_ids), (done + 1) * VIDEO_BATCH))
    extra = {}
    if person_run is not None:
        extra["faces.csv"] = faces_csv(
            _face_rows(person_run.pk, params["category_id"], by_video, time_of)
        )
    path = export_dir(ctx.job_id) / f"segments-{ctx.job_id}.zip"
    count = write_segments_zip(
        path,
        label,
        results,
        meta={"threshold": threshold, "merge_shots": merge_shots, "keyframes": n_hits},
        extra_files=extra,
    )
    videos = f"{len(results)} video{'s' * (len(results) != 1)}"
    summary = f"{count} segments in {videos} ({n_hits} keyframes ≥ {threshold:.0%})."
    ctx.log(summary)
    return {
        "summary": summary,
        "segments": count,
        "videos": len(results),
        "keyframes": n_hits,
        "file": path.name,
        "url": reverse("retrieval:download", args=[ctx.job_id]),
        "url_label": "Download zip",
    }


def _face_rows(run_id: int, category_id: int, by_video: dict, time_of: dict):
    """Rows of ``faces.csv``: the recognised face (and its box) of every exported hit."""
    video_of = {i: v for v, scores in by_video.items() for i in scores}
    ids = sorted(video_of)
    for batch in _batched(ids, 5000):
        preds = Prediction.objects.filter(
            run_id=run_id, category_id=category_id, image_id__in=batch, face__isnull=False
        ).values_list("image_id", "face_id", "score")
        preds = list(preds)
        boxes = dict(Face.objects.filter(pk__in=[p[1] for p in preds]).values_list("pk", "box"))
        for image_id, face_id, score in sorted(preds):
            yield {
                "image_id": image_id,
                "video_id": video_of[image_id],
                "time_ms": time_of.get(image_id),
                "face_id": face_id,
                "box": boxes.get(face_id),
                "score": score,
            }


@job_handler("export_dataset", queue="io", label="dataset export")
def export_dataset_job(ctx: JobContext) -> dict:
    params = ctx.params
    category_ids = [int(c) for c in params.get("category_ids") or []]
    include_images = bool(params.get("include_images"))
    categories_qs = Category.objects.all()
    if category_ids:
        categories_qs = categories_qs.filter(pk__in=category_ids)
    categories = list(categories_qs.values("id", "name", "kind", "description"))
    if not categories:
        raise JobError("No categories to export.")
    names = {c["id"]: c for c in categories}
    annotations = Annotation.objects.filter(category_id__in=list(names)).order_by(
        "image_id", "category_id", "face_id"
    )
    ctx.set_total(annotations.count(), note="Writing annotations")
    fields = (
        "image_id",
        "face_id",
        "category_id",
        "value",
        "source",
        "user__username",
        "updated_at",
        "image__file",
        "image__sha256",
        "image__video_id",
        "image__video__title",
        "image__time_ms",
    )

    def rows():
        for r in annotations.values(*fields).iterator(chunk_size=5000):
            category = names[r["category_id"]]
            yield {
                "image_id": r["image_id"],
                "face_id": r["face_id"],
                "category_id": r["category_id"],
                "category": category["name"],
                "kind": category["kind"],
                "value": r["value"],
                "source": r["source"],
                "user": r["user__username"] or "",
                "updated_at": r["updated_at"].isoformat() if r["updated_at"] else "",
                "file": r["image__file"],
                "sha256": r["image__sha256"],
                "video_id": r["image__video_id"],
                "video_title": r["image__video__title"] or "",
                "time_ms": r["image__time_ms"],
            }

    missing: list[str] = []
    path = export_dir(ctx.job_id) / f"dataset-{ctx.job_id}.zip"
    counts = write_dataset_zip(
        path,
        categories,
        rows(),
        include_images=include_images,
        media_root=settings.MEDIA_ROOT,
        on_row=lambda n: ctx.progress(n),
        on_missing=missing.append,
    )
    for name in missing[:20]:
        ctx.log(f"Image file missing, not included: {name}")
    summary = (
        f"{counts['annotations']} labels of {counts['images']} images in "
        f"{len(categories)} categories"
        + (f", {counts['files']} image files" if include_images else "")
        + "."
    )
    ctx.log(summary)
    return {
        "summary": summary,
        **counts,
        "missing_files": len(missing),
        "file": path.name,
        "url": reverse("retrieval:download", args=[ctx.job_id]),
        "url_label": "Download zip",
    }
