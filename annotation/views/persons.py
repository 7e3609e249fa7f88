"""Labelling persons by faces: clusters, the face grid, review, and the face-label endpoint.

Workflow (issue 7, thesis 6.3.3): images acquired for a person (crawler, upload/URL,
sequence import) are scanned for faces in the background; the faces are grouped by
agglomerative clustering (:mod:`annotation.clustering`); the annotator labels whole
clusters on ``person_clusters`` (one key per cluster), then corrects single faces in
the face grid (``person_faces``) and reviews them by label (``person_review``).

Every page takes ``?category=ID`` (a person); without it the person selected in the
session is used, and without that a chooser is shown. Opening a person selects it, so
the selection bar and the other pages follow.

Roles: annotator for everything (labelling is the annotator's work). The clusters page
answers its POST actions (label a cluster, cluster again, detect faces) as JSON when the
browser asks for JSON and with a redirect otherwise, so it works without JavaScript too.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.db import OperationalError
from django.http import HttpRequest, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.views import View
from django.views.generic import TemplateView

from viva.jobs import JobError, start_job
from viva.media import media_url
from viva.models import Job
from viva.roles import Role, RoleRequiredMixin, has_role

from ..clustering import (
    acquisition_status,
    build_clusters,
    cluster_overview,
    label_cluster,
    pending_image_ids,
)
from ..face_grid import face_label_counts, face_review_page, faces_page
from ..grid import GridSpec, grid_size, page_links, parse_page_args
from ..labels import MAX_BATCH, LabelError, parse_value
from ..models import Category, FaceCluster, Label, Source
from ..selection import get_selected, set_selected
from .grid import acquisition_links
from .label_api import (
    CLIENT_SOURCES,
    BadPayload,
    JsonRoleMixin,
    error,
    read_grid_payload,
    save_batch,
)

logger = logging.getLogger(__name__)

VALUES = {"positive": Label.POSITIVE, "negative": Label.NEGATIVE, "neutral": Label.NEUTRAL}
# Up to this many faces, "cluster again" runs inside the request (well under a second);
# more go to the "cluster_faces" job with a progress bar.
INLINE_CLUSTER_FACES = 1500
FACE_JOBS = ("index_faces", "cluster_faces")


def inline_limit() -> int:
    return int(getattr(settings, "VIVA_PERSON_CLUSTER_INLINE_FACES", INLINE_CLUSTER_FACES))


def _int(raw: Any) -> int | None:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def persons() -> list[Category]:
    return list(Category.objects.filter(kind=Category.Kind.PERSON).order_by("name"))


def person_url(name: str, category: Category, **params: Any) -> str:
    query = {"category": category.pk, **{k: v for k, v in params.items() if v not in (None, "")}}
    return reverse(name) + "?" + urlencode(query)


class PersonMixin:
    """``self.person``: the person of ``?category=`` (or ``category`` in a POST), else the
    person selected in the session; ``None`` shows the chooser (``self.person_error``)."""

    request: HttpRequest
    person: Category | None = None
    person_error: str = ""
    person_error_status: int = 409  # 409: the person is gone; 400: not a person

    def dispatch(self, request: HttpRequest, *args, **kwargs):
        raw = request.POST.get("category") if request.method == "POST" else None
        raw = raw or request.GET.get("category")
        if raw:
            category = Category.objects.filter(pk=_int(raw) or 0).first()
            if category is None:
                self.person_error = "This person no longer exists (or never did); choose another."
            elif category.kind != Category.Kind.PERSON:
                self.person_error_status = 400
                self.person_error = (
                    f"“{category.name}” is a concept; faces are labelled for persons. "
                    "Concepts are labelled in the label grid."
                )
            else:
                self.person = category
        else:
            self.person = get_selected(request, Category.Kind.PERSON)
        if self.person is not None and request.user.is_authenticated:
            set_selected(request, self.person)
        return super().dispatch(request, *args, **kwargs)  # type: ignore[misc]

    def person_context(self) -> dict[str, Any]:
        return {
            "person": self.person,
            "selected_category": self.person,
            "person_error": self.person_error,
            "persons": persons() if self.person is None else [],
            "page_url_name": getattr(self, "url_name", ""),
        }


def _face_grid(
    request: HttpRequest,
    grid_page,
    person: Category,
    *,
    source: str,
    save_next_url: str | None = None,
    empty_message: str,
) -> dict[str, Any]:
    rows, cols = grid_size(request.user)
    return GridSpec(
        items=grid_page.items,
        save_url=reverse("annotation:save_face_labels"),
        category_id=person.pk,
        source=source,
        page=page_links(request, grid_page),
        rows=rows,
        cols=cols,
        prefs_url=reverse("annotation:grid_prefs"),
        readonly=not has_role(request.user, Role.ANNOTATOR),
        save_next_url=save_next_url,
        empty_message=empty_message,
    ).as_dict()


def _active_job(person: Category, *, pending: int = 0) -> Job | None:
    """The running face detection or clustering job of this person, if any.

    Jobs started here carry ``category_id``; detection started automatically when images
    arrive covers image ids only, so while images wait for detection any running
    ``index_faces`` job is shown (it is most likely working on them).
    """
    active = Job.objects.filter(kind__in=FACE_JOBS, status__in=Job.ACTIVE).order_by("-created_at")
    job = active.filter(params__category_id=person.pk).first()
    if job is None and pending:
        job = active.filter(kind="index_faces").first()
    return job


# --------------------------------------------------------------------------- clusters


def cluster_state(counts: dict) -> str:
    """How a cluster card is marked: all faces one label, some labelled, or none."""
    size = counts.get("size", 0)
    for name, short in (("positive", "pos"), ("negative", "neg"), ("neutral", "neu")):
        if size and counts.get(name, 0) == size:
            return short
    return "mixed" if counts.get("unlabelled", 0) < size else "none"


def cluster_version(created_at) -> str:
    """Which clustering run a cluster number belongs to (numbers restart every run)."""
    return created_at.isoformat() if created_at else ""


def decorate_cluster(cluster: dict) -> dict:
    """Add what the cluster card shows: state, sample URLs and boxes, hidden faces."""
    cluster["state"] = cluster_state(cluster)
    cluster["version"] = cluster_version(cluster["created_at"])
    cluster["more"] = max(0, cluster["size"] - len(cluster["samples"]))
    for sample in cluster["samples"]:
        sample["thumb"] = media_url(sample["face__thumbnail"] or sample["face__image__thumbnail"])
        sample["full"] = media_url(sample["face__image__file"])
        sample["box_json"] = json.dumps(sample["face__box"] or [])
    return cluster


class PersonClustersView(RoleRequiredMixin, PersonMixin, TemplateView):
    """``annotation:person_clusters``: status, "detect faces", "cluster again", clusters."""

    min_role = Role.ANNOTATOR
    template_name = "annotation/persons_clusters.html"
    url_name = "annotation:person_clusters"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx.update(self.person_context())
        person = self.person
        if person is None:
            return ctx
        status = acquisition_status(person)
        clusters = cluster_overview(person)
        job = _active_job(person, pending=status.pending)
        for cluster in clusters:
            decorate_cluster(cluster)
            cluster["faces_url"] = person_url(
                "annotation:person_faces", person, cluster=cluster["number"]
            )
        ctx.update(
            status=status,
            clusters=clusters,
            job=job,
            job_status_url=reverse("jobs:status", args=[job.pk]) if job else "",
            max_clusters=getattr(settings, "VIVA_PERSON_MAX_CLUSTERS", 100),
            faces_url=person_url("annotation:person_faces", person),
            review_url=person_url("annotation:person_review", person),
            acquisition_links=acquisition_links(),
            page_data={
                "category": person.pk,
                "url": reverse("annotation:person_clusters"),
                "clusters": [
                    {"number": c["number"], "size": c["size"], "faces_url": c["faces_url"]}
                    for c in clusters
                ],
                "job_status_url": reverse("jobs:status", args=[job.pk]) if job else "",
                # After face detection finishes, group the faces at once when there are
                # no clusters yet (nothing to replace, so nothing to confirm).
                "auto_cluster": not clusters,
            },
        )
        return ctx

    # -- POST actions --------------------------------------------------------------
    def post(self, request: HttpRequest):
        is_json = request.content_type == "application/json"
        wants_json = is_json or "application/json" in request.headers.get("accept", "")
        data: dict[str, Any] = request.POST.dict()
        if is_json:
            try:
                data = json.loads(request.body or b"{}")
            except ValueError:
                return self._answer(wants_json, "The request was not valid JSON.", 400)
            if not isinstance(data, dict):
                return self._answer(wants_json, "Expected a JSON object.", 400)
        # Actions name their person explicitly: the session's selection may have changed
        # in another tab since this page was loaded.
        if not _int(data.get("category")):
            return self._answer(wants_json, "No person given; reload the page and retry.", 400)
        if is_json:
            category = Category.objects.filter(pk=_int(data["category"])).first()
            self.person = None
            if category is None:
                self.person_error = "This person no longer exists; nothing was changed."
            elif category.kind != Category.Kind.PERSON:
                self.person_error_status = 400
                self.person_error = f"“{category.name}” is a concept; faces belong to persons."
            else:
                self.person = category
        if self.person is None:
            return self._answer(
                wants_json,
                self.person_error or "This person no longer exists; nothing was changed.",
                self.person_error_status,
            )
        action = data.get("action")
        handler = {
            "label": self._label,
            "cluster": self._cluster,
            "detect": self._detect,
        }.get(action or "")
        if handler is None:
            return self._answer(wants_json, f"Unknown action {action!r}.", 400)
        return handler(data, wants_json)

    def _answer(self, wants_json: bool, message: str, status: int = 200, **extra):
        if wants_json:
            body = {"message": message, **extra} if status < 400 else {"error": message}
            return JsonResponse(body, status=status)
        level = messages.SUCCESS if status < 400 else messages.ERROR
        messages.add_message(self.request, level, message)
        if self.person is None:
            return HttpResponseRedirect(reverse("annotation:person_clusters"))
        return HttpResponseRedirect(person_url("annotation:person_clusters", self.person))

    def _label(self, data: dict, wants_json: bool):
        person = self.person
        number = _int(data.get("cluster"))
        cluster = FaceCluster.objects.filter(category=person, number=number or 0).first()
        version = data.get("version")
        if cluster is None or (version and version != cluster_version(cluster.created_at)):
            # Someone clustered again since this page was loaded: cluster 3 is now other
            # faces, and labelling it would label the wrong people.
            return self._answer(
                wants_json,
                "The faces were clustered again since this page was loaded; nothing was "
                "labelled. Reload the page to see the new clusters.",
                409,
            )
        try:
            value = parse_value(data.get("value"))
        except LabelError as exc:
            return self._answer(wants_json, str(exc), 400)
        try:
            result = label_cluster(
                cluster, value, user=self.request.user, overwrite=bool(data.get("overwrite"))
            )
        except LabelError as exc:  # the person was deleted meanwhile
            return self._answer(wants_json, str(exc).replace("category", "person"), 409)
        except OperationalError:
            logger.warning("label_cluster: database busy", exc_info=True)
            return self._answer(wants_json, "The database is busy; please retry.", 503)
        what = {1: "positive", -1: "negative", 0: "neutral", None: "unlabelled"}[value]
        message = f"Cluster {cluster.number}: {result.saved} face(s) labelled {what}."
        if value is None:
            message = f"Cluster {cluster.number}: removed {result.saved} cluster label(s)."
        if result.kept:
            message += f" {result.kept} face(s) labelled one by one kept their label."
        counts = next(
            (c for c in cluster_overview(person, samples=0) if c["number"] == cluster.number), {}
        )
        return self._answer(
            wants_json,
            message,
            cluster=cluster.number,
            value=value,
            result=result.as_dict(),
            counts={k: counts.get(k, 0) for k in ("positive", "negative", "neutral", "unlabelled")},
            state=cluster_state(counts) if counts else "none",
        )

    def _cluster(self, data: dict, wants_json: bool):
        person = self.person
        status = acquisition_status(person)
        if not status.embedded:
            return self._answer(
                wants_json,
                "No faces to cluster yet: detect faces in the acquired images first.",
                400,
            )
        if _active_job(person):
            return self._answer(
                wants_json, "Face detection or clustering is running; wait until it ends.", 409
            )
        if status.embedded > inline_limit():
            job = start_job("cluster_faces", {"category_id": person.pk}, user=self.request.user)
            return self._answer(
                wants_json,
                f"Clustering {status.embedded} faces in the background (job {job.pk}).",
                job=job.pk,
                job_status_url=reverse("jobs:status", args=[job.pk]),
            )
        try:
            clusters = build_clusters(person)
        except Category.DoesNotExist:
            return self._answer(wants_json, "This person no longer exists.", 409)
        except OperationalError:
            return self._answer(wants_json, "The database is busy; please retry.", 503)
        faces = sum(c.size for c in clusters)
        return self._answer(
            wants_json,
            f"Grouped {faces} face(s) into {len(clusters)} cluster(s). Labels were kept.",
            clusters=len(clusters),
        )

    def _detect(self, data: dict, wants_json: bool):
        person = self.person
        pending = pending_image_ids(person)
        if not pending:
            return self._answer(wants_json, "Every acquired image was already scanned.")
        if _active_job(person):
            return self._answer(
                wants_json, "Face detection or clustering is running; wait until it ends.", 409
            )
        try:
            # The person's id travels along so this page finds the job and shows progress.
            job = start_job(
                "index_faces",
                {"image_ids": pending, "category_id": person.pk},
                user=self.request.user,
                title=f"Face detection for “{person.name}”",
            )
        except JobError as exc:
            return self._answer(wants_json, f"Face detection cannot start here: {exc}", 503)
        return self._answer(
            wants_json,
            f"Detecting faces in {len(pending)} image(s) (job {job.pk}).",
            job=job.pk,
            job_status_url=reverse("jobs:status", args=[job.pk]),
        )


# --------------------------------------------------------------------------- faces


class PersonFacesView(RoleRequiredMixin, PersonMixin, TemplateView):
    """``annotation:person_faces``: all faces of a person, or one cluster's (``cluster=N``)."""

    min_role = Role.ANNOTATOR
    template_name = "annotation/persons_faces.html"
    url_name = "annotation:person_faces"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx.update(self.person_context())
        person, request = self.person, self.request
        if person is None:
            return ctx
        number = _int(request.GET.get("cluster"))
        cluster = None
        if number is not None:
            cluster = FaceCluster.objects.filter(category=person, number=number).first()
            if cluster is None:
                ctx["cluster_missing"] = number
        unlabelled = request.GET.get("show") == "unlabelled"
        rows, cols = grid_size(request.user)
        page, _after = parse_page_args(request)
        grid_page = faces_page(
            person, cluster=cluster, page=page, per_page=rows * cols, unlabelled_only=unlabelled
        )
        save_next_url = None
        if unlabelled and grid_page.next_cursor is None:
            # Saved faces leave the "unlabelled" list: reload it to show what is left.
            save_next_url = person_url(
                "annotation:person_faces", person, cluster=number, show="unlabelled"
            )
        n_clusters = FaceCluster.objects.filter(category=person).count()
        ctx.update(
            cluster=cluster,
            unlabelled=unlabelled,
            n_clusters=n_clusters,
            all_url=person_url("annotation:person_faces", person, cluster=number),
            unlabelled_url=person_url(
                "annotation:person_faces", person, cluster=number, show="unlabelled"
            ),
            prev_cluster_url=(
                person_url("annotation:person_faces", person, cluster=cluster.number - 1)
                if cluster and cluster.number > 1
                else ""
            ),
            next_cluster_url=(
                person_url("annotation:person_faces", person, cluster=cluster.number + 1)
                if cluster and cluster.number < n_clusters
                else ""
            ),
            clusters_url=person_url("annotation:person_clusters", person),
            review_url=person_url("annotation:person_review", person),
            grid=_face_grid(
                request,
                grid_page,
                person,
                source=Source.GRID,
                save_next_url=save_next_url,
                empty_message=(
                    "Every face here is labelled."
                    if unlabelled
                    else "No faces yet: detect faces in the acquired images on the clusters page."
                ),
            ),
        )
        return ctx


class PersonReviewView(RoleRequiredMixin, PersonMixin, TemplateView):
    """``annotation:person_review``: a person's labelled faces by value, to correct them."""

    min_role = Role.ANNOTATOR
    template_name = "annotation/persons_review.html"
    url_name = "annotation:person_review"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx.update(self.person_context())
        person, request = self.person, self.request
        if person is None:
            return ctx
        value_name = request.GET.get("value", "positive")
        if value_name not in VALUES:
            value_name = "positive"
        rows, cols = grid_size(request.user)
        page, _after = parse_page_args(request)
        grid_page = face_review_page(person, VALUES[value_name], page=page, per_page=rows * cols)
        counts = face_label_counts(person)
        ctx.update(
            value=value_name,
            tabs=[
                (name, counts.get(v, 0), person_url("annotation:person_review", person, value=name))
                for name, v in VALUES.items()
            ],
            clusters_url=person_url("annotation:person_clusters", person),
            faces_url=person_url("annotation:person_faces", person),
            grid=_face_grid(
                request,
                grid_page,
                person,
                source=Source.REVIEW,
                empty_message=f"No faces labelled {value_name} for “{person.name}” yet.",
            ),
        )
        return ctx


# --------------------------------------------------------------------------- saving


class SaveFaceLabelsView(JsonRoleMixin, View):
    """``annotation:save_face_labels``: the grid's save protocol with face ids as keys
    (see :mod:`annotation.views.label_api`); 409 when the person was deleted."""

    min_role = Role.ANNOTATOR

    def post(self, request: HttpRequest):
        try:
            payload, labels = read_grid_payload(request, MAX_BATCH)
        except BadPayload as exc:
            return error(str(exc), 400)
        category_id = _int(payload.get("category"))
        if category_id is None:
            return error("No person given; choose a person and retry.", 400)
        kind = Category.objects.filter(pk=category_id).values_list("kind", flat=True).first()
        if kind is None:
            return error("This person no longer exists; the labels were not saved.", 409)
        if kind != Category.Kind.PERSON:
            return error("Faces are labelled for persons only, not for concepts.", 400)
        source = payload.get("source") or Source.GRID
        if source not in CLIENT_SOURCES:
            return error(f"Unknown source {source!r}.", 400)

        return save_batch(labels, category_id, request.user, source, faces=True)
