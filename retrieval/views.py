"""Retrieval pages: ranked results with feedback, combined search, export and download.

Roles (DESIGN.md section 8): researchers search, browse and export; labelling in the
grid needs the annotator role, so for researchers the grid is read-only (the save
endpoint checks the role again). Labels given here are saved through
``annotation:save_labels`` with source "feedback": they are ordinary annotations and
count in the next training run (negative feedback = hard negatives).
All page state lives in GET parameters (:mod:`retrieval.query`), so a URL is shareable.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponseRedirect, QueryDict
from django.shortcuts import get_object_or_404
from django.urls import NoReverseMatch, reverse
from django.views import View
from django.views.generic import TemplateView

from annotation.grid import grid_size, parse_page_args
from annotation.models import Annotation, Category, Source
from annotation.selection import CategoryRequiredMixin, get_selected
from annotation.views.grid import build_grid
from viva.jobs import start_job
from viva.media import media_url
from viva.models import Collection, Face, Job
from viva.roles import Role, RoleRequiredMixin
from viva.views.jobs import may_control

from .export import default_threshold, export_dir
from .models import InferenceRun, Prediction
from .query import (
    DEFAULT_MIN_SCORE,
    OPERATORS,
    default_min_score,
    parse_filters,
    parse_query,
)
from .ranking import QueryError, combined_page, published_run, published_runs, ranked_page

EXPORT_KINDS = ("export_segments", "export_dataset")
EMPTY_ROWS = 2
# Filters a segment export of one category keeps (the others shape a page, not a result).
METADATA_PARAMS = ("collection", "title", "year_from", "year_to")


def inference_url() -> str | None:
    try:
        return reverse("training:inference")
    except NoReverseMatch:
        return None


def person_grid(grid: dict, run: InferenceRun | None, category: Category) -> dict:
    """Turn a grid of keyframes into a grid of the *recognised faces* of a person.

    Each cell shows the crop of the face the person model recognised (the keyframe stays
    the cell's full view) and carries that face's label; labels post to
    ``training:person_feedback`` as face annotations (source "feedback"), which the next
    person training reads. Cells without a recognised face of this person (an OR term
    of another category matched) keep an image key the endpoint refuses, so a label can
    never land on the wrong face. A page without any recognised face is left as it is.
    Two queries for faces and one for labels per page."""
    items = grid.get("items") or []
    image_ids = [int(i["key"]) for i in items if str(i.get("key", "")).isdigit()]
    faces: dict[int, dict] = {}
    if run is not None and image_ids:
        rows = Prediction.objects.filter(
            run=run, category=category, image_id__in=image_ids, face__isnull=False
        ).values("image_id", "face_id")
        by_face = {r["face_id"]: r["image_id"] for r in rows}
        for face in Face.objects.filter(pk__in=list(by_face)).values("id", "thumbnail", "box"):
            faces[by_face[face["id"]]] = face
    if not faces:
        # Predictions without a face (runs stored before faces were kept): the cells stay
        # keyframes with image labels, saved as before.
        return grid
    labels = dict(
        Annotation.objects.filter(
            category=category, face_id__in=[f["id"] for f in faces.values()]
        ).values_list("face_id", "value")
    )
    for item in items:
        key = str(item.get("key", ""))
        face = faces.get(int(key)) if key.isdigit() else None
        if face is None:
            item["key"] = f"image-{key}"
            item["label"] = None
            item["extra"] = (item.get("extra", "") + " · no recognised face").strip(" ·")
            continue
        item["key"] = str(face["id"])
        if face["thumbnail"]:
            item["thumb"] = media_url(face["thumbnail"])
        item["label"] = labels.get(face["id"])
        item["extra"] = (item.get("extra", "") + " · face").strip(" ·")
    grid["save_url"] = reverse("training:person_feedback")
    return grid


def _collections() -> list[dict]:
    return list(Collection.objects.order_by("name").values("id", "name"))


class RankedView(RoleRequiredMixin, CategoryRequiredMixin, TemplateView):
    """``retrieval:ranked``: the selected category's keyframes ranked by score."""

    min_role = Role.RESEARCHER
    template_name = "retrieval/ranked.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        request, category = self.request, self.category
        filters = parse_filters(request.GET)
        run = published_run(category.kind)
        ctx.update(
            filters=filters,
            collections=_collections(),
            run=run,
            inference_url=inference_url(),
            export_url=reverse("retrieval:export")
            + "?"
            + urlencode({"category": category.pk, **filters.as_params()}),
        )
        if run is None:
            return ctx
        rows, cols = grid_size(request.user)
        number, after = parse_page_args(request)
        grid_page = ranked_page(
            run, category, filters, page=number, per_page=rows * cols, after=after
        )
        ctx["grid"] = build_grid(
            request,
            grid_page,
            category,
            source=Source.FEEDBACK,
            rows=rows,
            cols=cols,
            empty_message="No keyframes match these filters.",
        )
        if category.kind == Category.Kind.PERSON:
            ctx["grid"] = person_grid(ctx["grid"], run, category)
        return ctx


class SearchView(RoleRequiredMixin, TemplateView):
    """``retrieval:search``: concepts combined with AND / OR / NOT plus metadata."""

    min_role = Role.RESEARCHER
    template_name = "retrieval/search.html"

    def get(self, request, *args, **kwargs):
        if "term_category" in request.GET:
            # The form's rows → the compact, shareable ``t=`` form.
            query = parse_query(request.GET)
            ids = [t.category_id for t in query.terms]
            kinds = dict(Category.objects.filter(pk__in=ids).values_list("pk", "kind"))
            params = query.with_kinds(kinds).as_params()
            if request.GET.get("label"):
                params.append(("label", request.GET["label"]))
            return HttpResponseRedirect(request.path + "?" + urlencode(params, safe=":"))
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        request = self.request
        query = parse_query(request.GET)
        categories = list(Category.objects.values("id", "name", "kind"))
        known = {c["id"]: c for c in categories}
        errors = list(query.errors)
        missing = [t.category_id for t in query.terms if t.category_id not in known]
        if missing:
            errors.append("Some categories of this query no longer exist; they were dropped.")
        # A term's kind (concept or person) is the category's: it picks the published run.
        query = query.with_kinds({c["id"]: c["kind"] for c in categories})
        rows_ = [
            {"category_id": t.category_id, "op": t.op, "min": t.min_score} for t in query.terms
        ]
        # An empty row's min score stays blank: the chosen category's kind gives the
        # default (the placeholder shows both).
        rows_ += [{"category_id": None, "op": "and", "min": ""}] * (EMPTY_ROWS if not rows_ else 1)
        positive = [t.category_id for t in query.positive_terms]
        label_id = None
        try:
            label_id = int(request.GET.get("label", ""))
        except ValueError:
            pass
        if label_id not in positive:
            label_id = positive[0] if positive else None
        label_category = Category.objects.filter(pk=label_id).first() if label_id else None
        ctx.update(
            query=query,
            filters=query.filters,
            term_rows=rows_,
            operators=OPERATORS,
            categories=categories,
            collections=_collections(),
            label_category=label_category,
            label_choices=[known[c] for c in dict.fromkeys(positive)],
            share_url=request.build_absolute_uri(request.path + "?" + query.urlencode())
            if query.terms
            else "",
            inference_url=inference_url(),
            default_min=DEFAULT_MIN_SCORE,
            person_min=round(default_min_score("person"), 3),
        )
        if query.terms and not query.is_runnable:
            errors.append("Add at least one concept with AND or OR; NOT alone ranks nothing.")
        if query.is_runnable:  # messages above are warnings: the valid terms still run
            runs = published_runs()
            rows, cols = grid_size(request.user)
            number, _ = parse_page_args(request)
            try:
                grid_page = combined_page(
                    query,
                    runs,
                    label_category_id=label_id,
                    page=number,
                    per_page=rows * cols,
                )
            except QueryError as exc:
                errors.append(str(exc))
            else:
                ctx["grid"] = build_grid(
                    request,
                    grid_page,
                    label_category,
                    source=Source.FEEDBACK,
                    rows=rows,
                    cols=cols,
                    empty_message="No keyframes match this query.",
                )
                if label_category is not None and label_category.kind == Category.Kind.PERSON:
                    ctx["grid"] = person_grid(ctx["grid"], runs.get("person"), label_category)
                ctx["export_url"] = (
                    reverse("retrieval:export") + "?" + urlencode({"query": query.urlencode()})
                )
        ctx["errors"] = errors
        return ctx


def _query_kind(query, kinds: dict[int, str]) -> str:
    """ "person" when every AND/OR term of ``query`` is a person, else "concept"."""
    positive = query.positive_terms
    if positive and all(kinds.get(t.category_id) == "person" for t in positive):
        return "person"
    return "concept"


def _percent(value: float) -> int | float:
    """A threshold as the export form's percent: whole numbers stay whole (70, not 70.0)."""
    percent = round(value * 100, 1)
    return int(percent) if percent == int(percent) else percent


def _threshold(raw: str | None, default: float) -> float:
    try:
        value = float((raw or "").replace(",", "."))
    except ValueError:
        return default
    if value > 1:
        value /= 100
    return min(1.0, max(0.0, value))


class ExportView(RoleRequiredMixin, TemplateView):
    """``retrieval:export``: start a segment export (category or query) or a dataset export."""

    min_role = Role.RESEARCHER
    template_name = "retrieval/export.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        request = self.request
        categories = list(Category.objects.values("id", "name", "kind"))
        selected = None
        try:
            selected = int(request.GET.get("category", ""))
        except ValueError:
            current = get_selected(request)
            selected = current.pk if current else None
        query_text = request.GET.get("query", "")
        query = parse_query(QueryDict(query_text)) if query_text else None
        kinds = {c["id"]: c["kind"] for c in categories}
        if query is not None and query.positive_terms:
            kind = _query_kind(query, kinds)
        else:
            kind = kinds.get(selected, "concept")
        metadata = {
            k: v for k, v in parse_filters(request.GET).as_params().items() if k in METADATA_PARAMS
        }
        ctx.update(
            filters_text=urlencode(metadata),
            categories=categories,
            selected=selected,
            query_text=query_text if query is not None and query.terms else "",
            threshold=_percent(default_threshold(kind)),
            thresholds={k: _percent(default_threshold(k)) for k in ("concept", "person")},
            person_from_model=published_run("person") is not None,
            recent=Job.objects.filter(kind__in=EXPORT_KINDS, created_by=request.user)[:10],
        )
        return ctx

    def post(self, request, *args, **kwargs):
        data = request.POST
        what = data.get("what", "segments")
        if what == "dataset":
            ids = [int(c) for c in data.getlist("categories") if c.isdigit()]
            job = start_job(
                "export_dataset",
                {"category_ids": ids, "include_images": data.get("include_images") == "1"},
                user=request.user,
                title="Export of the labelled dataset",
            )
            return HttpResponseRedirect(reverse("jobs:detail", args=[job.pk]))
        query_text = data.get("query", "")
        params: dict = {"merge_shots": data.get("merge_shots", "1") == "1"}
        if query_text:
            query = parse_query(QueryDict(query_text))
            if not query.is_runnable:
                messages.error(request, "The query needs at least one AND or OR term.")
                return HttpResponseRedirect(request.path)
            params["query"] = query.urlencode()
            title = "Export of a combined query"
            ids = [t.category_id for t in query.terms]
            kind = _query_kind(
                query, dict(Category.objects.filter(pk__in=ids).values_list("pk", "kind"))
            )
        else:
            category = Category.objects.filter(pk=data.get("category") or 0).first()
            if category is None:
                messages.error(request, "Choose a category or a query to export.")
                return HttpResponseRedirect(request.path)
            params["category_id"] = category.pk
            metadata = parse_filters(QueryDict(data.get("filters", "")))
            meta = {k: v for k, v in metadata.as_params().items() if k in METADATA_PARAMS}
            if meta:
                params["filters"] = urlencode(meta)
            title = f"Export of “{category.name}”"
            kind = category.kind
        params["threshold"] = _threshold(data.get("threshold"), default_threshold(kind))
        job = start_job("export_segments", params, user=request.user, title=title)
        return HttpResponseRedirect(reverse("jobs:detail", args=[job.pk]))


class DownloadView(RoleRequiredMixin, View):
    """``retrieval:download``: the zip of a finished export job — for its creator and trainers."""

    min_role = Role.RESEARCHER

    def get(self, request, pk: int):
        job = get_object_or_404(Job, pk=pk, kind__in=EXPORT_KINDS)
        if not may_control(request.user, job):
            raise PermissionDenied("Only the user who started this export can download it.")
        name = (job.result or {}).get("file", "")
        if job.status != Job.Status.SUCCEEDED or not name or "/" in name or "\\" in name:
            raise Http404("This export has no file (yet).")
        path = export_dir(job.pk, create=False) / name
        if not path.is_file():
            raise Http404("The export file is gone; run the export again.")
        return FileResponse(path.open("rb"), as_attachment=True, filename=name)
