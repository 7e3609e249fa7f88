"""The face-indexing page (issue 7): how much of the archive is face-indexed, which
weights made the stored embeddings (with a loud warning for random ones), the button
that indexes the archive or one collection, the live view of the running job and the
last jobs.

Trainer and up: indexing occupies a GPU for hours on a large archive, like inference.
The work is :mod:`training.faces.pipeline`; starting it is :mod:`training.faces.jobs`.
"""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count, Q
from django.http import Http404, HttpResponseRedirect
from django.urls import reverse
from django.views.generic import TemplateView

from viva.models import Collection, Face, Image, Job
from viva.roles import Role, RoleRequiredMixin

from .embed import embedder_source, install_advice
from .jobs import JOB_KIND, start_face_indexing


def face_stats() -> dict:
    """Counts for the page (two aggregate queries)."""
    images = Image.objects.aggregate(
        total=Count("pk"), scanned=Count("pk", filter=Q(faces_scanned_at__isnull=False))
    )
    per_embedder = dict(
        Face.objects.values("embedder").annotate(n=Count("pk")).values_list("embedder", "n")
    )
    return {
        "images_total": images["total"],
        "images_scanned": images["scanned"],
        "faces_total": sum(per_embedder.values()),
        "per_embedder": sorted(per_embedder.items(), key=lambda kv: -kv[1]),
        "random_faces": per_embedder.get("random", 0),
    }


def _archive_job_running() -> Job | None:
    """The active face-indexing job over the whole archive (no image or collection
    list), if any: a second job would only do the same work again."""
    for job in Job.objects.filter(kind=JOB_KIND, status__in=Job.ACTIVE).order_by("created_at"):
        params = job.params or {}
        if params.get("image_ids") is None and not params.get("collection_ids"):
            return job
    return None


class FacesView(RoleRequiredMixin, TemplateView):
    """GET: the page (``?job=<id>`` shows that job). POST: start indexing — the whole
    archive, or the collection in ``collection``; ``rescan=1`` scans scanned images
    again (faces with labels are kept)."""

    min_role = Role.TRAINER
    template_name = "training/faces.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        jobs = Job.objects.filter(kind=JOB_KIND).select_related("created_by")
        raw = self.request.GET.get("job", "")
        if raw:
            if not raw.isdigit():
                raise Http404("No such face-indexing job.")
            job = jobs.filter(pk=int(raw)).first()
            if job is None:
                raise Http404("No such face-indexing job.")
        else:
            job = jobs.filter(status__in=Job.ACTIVE).order_by("created_at").first() or jobs.first()
        stats = face_stats()
        source = embedder_source()
        ctx.update(
            stats,
            source=source,
            advice=install_advice(),
            collections=Collection.objects.order_by("name").annotate(
                n_images=Count("images"),
                n_todo=Count("images", filter=Q(images__faces_scanned_at__isnull=True)),
            ),
            pct_scanned=(
                round(100 * stats["images_scanned"] / stats["images_total"], 1)
                if stats["images_total"]
                else 0
            ),
            job=job,
            jobs=jobs[:10],
        )
        return ctx

    def post(self, request, *args, **kwargs):
        raw = request.POST.get("collection", "")
        collection_ids = None
        if raw:
            if not raw.isdigit() or not Collection.objects.filter(pk=int(raw)).exists():
                messages.error(request, "Face indexing was not started: no such collection.")
                return HttpResponseRedirect(reverse("training:faces"))
            collection_ids = [int(raw)]
        if embedder_source() == "missing":
            from training.weights import download_allowed

            if not download_allowed():
                messages.error(
                    request,
                    "Face indexing was not started: there are no face-recognition weights "
                    f"on this machine. To enable it, {install_advice()}.",
                )
                return HttpResponseRedirect(reverse("training:faces"))
        running = _archive_job_running()
        if running is not None:
            messages.error(
                request,
                f"Face indexing was not started: job {running.pk} is indexing the whole "
                "archive already. Wait until it has finished (or cancel it) and start "
                "again.",
            )
            return HttpResponseRedirect(f"{reverse('training:faces')}?job={running.pk}")
        job = start_face_indexing(
            collection_ids=collection_ids,
            user=request.user,
            rescan=request.POST.get("rescan") == "1",
        )
        messages.success(
            request,
            f"Face indexing started (job {job.pk}). You can leave this page; the job goes "
            "on, and a cancelled job continues where it stopped.",
        )
        return HttpResponseRedirect(f"{reverse('training:faces')}?job={job.pk}")
