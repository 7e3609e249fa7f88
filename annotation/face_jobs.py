"""The "cluster_faces" job: cluster a person's faces in the background.

Average linkage needs every pairwise distance, so a person with a few thousand faces
takes seconds (about 2 s for 4,000 faces on one core) — too long for a request. The
handler only loads ids and calls :func:`annotation.clustering.build_clusters`, which
replaces the clusters atomically, so running it twice (a resumed or redelivered job) is
harmless: the second run writes the same clusters again.
"""

from __future__ import annotations

from django.urls import reverse

from viva.jobs import JobContext, JobError, job_handler

from .clustering import acquisition_status, build_clusters
from .models import Category


@job_handler("cluster_faces", queue="default", label="face clustering")
def cluster_faces_job(ctx: JobContext) -> dict:
    """params: ``category_id``. Result: how many clusters and faces, and a link to them."""
    try:
        category = Category.objects.get(pk=ctx.params["category_id"], kind=Category.Kind.PERSON)
    except (Category.DoesNotExist, KeyError, TypeError, ValueError):
        raise JobError("The person no longer exists; nothing was clustered.") from None
    status = acquisition_status(category)
    ctx.set_total(1, note=f"{status.embedded} face(s) of “{category.name}”")
    ctx.log(f"Clustering {status.embedded} face(s) of {status.images} acquired image(s).")
    ctx.check_cancelled()
    clusters = build_clusters(category)
    faces = sum(c.size for c in clusters)
    summary = f"{len(clusters)} cluster(s) of {faces} face(s) for “{category.name}”."
    ctx.log(summary)
    ctx.progress(1)
    return {
        "category_id": category.pk,
        "clusters": len(clusters),
        "faces": faces,
        "summary": summary,
        "url": reverse("annotation:person_clusters") + f"?category={category.pk}",
        "url_label": "Label the clusters",
    }
