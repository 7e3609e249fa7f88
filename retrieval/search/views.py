"""The researcher's similarity search page and the "build the index" action (issue 6).

``retrieval:similar`` (researchers): query by upload, by URL (fetched with
:mod:`annotation.safe_fetch` through annotation's ``ImageInputForm``, the same checks as
the acquisition page), by an archive image (``?image=<id>``, the grids' "find similar"
link) or by the positive images of a concept. Results — archive keyframes only by default —
appear as a read-only grid with their Hamming distance and a link to the video at that
moment; labelling happens on the acquisition page (annotators). Results are kept for
paging under an id in the URL (post/redirect/get), like the acquisition pages do.

``retrieval:similar_index`` (trainers, POST): starts the ``index_images`` job, which first
fits unsupervised hash codes when no hashing model exists. The status box on the page
shows the model, the backend, how many images are indexed and the last job with a live
progress bar. A backend that is down is one sentence on this page; nothing else breaks.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.http import HttpRequest
from django.shortcuts import redirect
from django.urls import reverse
from django.views import View
from django.views.generic import TemplateView

from annotation import similarity
from annotation.acquisition import load_results, save_results
from annotation.grid import GridSpec, grid_size, image_item, page_links
from annotation.models import Category, Source
from annotation.views.acquire import list_grid_page, slice_page
from annotation.views.query import MAX_POSITIVES, ImageInputForm, positive_image_ids
from viva.models import Image, Job
from viva.roles import Role, RoleRequiredMixin, has_role

from . import service

RESULTS_KIND = "similar-search"
SCOPES = [
    ("keyframes", "archive keyframes only"),
    ("all", "all images (also stills and web images)"),
]


class SimilarSearchForm(ImageInputForm):
    MODES = [("images", "uploaded images / URLs"), ("positives", "positives of a concept")]
    mode = forms.ChoiceField(choices=MODES, required=False)
    category = forms.ModelChoiceField(
        queryset=Category.objects.filter(kind=Category.Kind.CONCEPT).order_by("name"),
        required=False,
        empty_label="— choose a concept —",
    )
    k = forms.IntegerField(
        label="Results",
        min_value=1,
        max_value=similarity.MAX_K,
        initial=similarity.DEFAULT_K,
        required=False,
    )
    scope = forms.ChoiceField(choices=SCOPES, initial="keyframes", required=False)

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        data["k"] = data.get("k") or similarity.DEFAULT_K
        data["scope"] = data.get("scope") or "keyframes"
        if not data.get("mode"):
            data["mode"] = "positives" if data.get("category") else "images"
        if data["mode"] == "positives" and not data.get("category"):
            raise forms.ValidationError("Choose the concept whose positive images to search with.")
        if data["mode"] == "images" and not self.has_input():
            raise forms.ValidationError("Choose image files or paste image URLs to search with.")
        return data


def similar_url(image_id: int, scope: str = "keyframes") -> str:
    query = {"image": image_id} if scope == "keyframes" else {"image": image_id, "scope": scope}
    return reverse("retrieval:similar") + "?" + urlencode(query)


class SimilarSearchView(RoleRequiredMixin, TemplateView):
    """``retrieval:similar``: query by example for researchers (see the module docstring)."""

    min_role = Role.RESEARCHER
    template_name = "retrieval/similar.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        current = service.status(ask_backend=True)
        ctx.setdefault(
            "form", SimilarSearchForm(initial={"k": similarity.DEFAULT_K, "scope": "keyframes"})
        )
        ctx.update(
            status=current,
            may_build=has_role(self.request.user, Role.TRAINER),
            build_url=reverse("retrieval:similar_index"),
            hashing_url=_maybe_reverse("retrieval:hashing"),
            max_positives=MAX_POSITIVES,
            scopes=SCOPES,
        )
        return ctx

    def get(self, request: HttpRequest, *args, **kwargs):
        query_id = request.GET.get("query", "")
        if query_id:
            entry = load_results(RESULTS_KIND, query_id, user=request.user)
            if entry is None:
                messages.warning(request, "These results have expired; please search again.")
                return redirect("retrieval:similar")
            return self.render_to_response(
                self.get_context_data(**self.results_context(entry, query_id))
            )
        image_id = request.GET.get("image", "")
        if image_id:
            image = Image.objects.filter(pk=int(image_id)).first() if image_id.isdigit() else None
            if image is None:
                messages.error(request, "This image does not exist (any more).")
                return redirect("retrieval:similar")
            scope = "all" if request.GET.get("scope") == "all" else "keyframes"
            return self.run_query([image.pk], f"image “{image}”", similarity.DEFAULT_K, scope)
        return self.render_to_response(self.get_context_data())

    def post(self, request: HttpRequest, *args, **kwargs):
        form = SimilarSearchForm(request.POST, request.FILES)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form), status=400)
        data = form.cleaned_data
        if data["mode"] == "positives":
            category = data["category"]
            ids = positive_image_ids(category)
            if not ids:
                problem = (
                    f"“{category.name}” has no positive images yet; search with an uploaded "
                    "image or a URL instead."
                )
                return self.render_to_response(
                    self.get_context_data(form=form, problems=[problem]), status=400
                )
            description = f"{len(ids)} positive image(s) of “{category.name}”"
            return self.run_query(ids, description, data["k"], data["scope"], form=form)
        images, problems = form.load_images()
        if problems:
            return self.render_to_response(
                self.get_context_data(form=form, problems=problems), status=400
            )
        names = ", ".join(i.name for i in images[:3]) + (" …" if len(images) > 3 else "")
        pictures = [i.content for i in images]  # decoded as the indexed files were
        return self.run_query(pictures, names, data["k"], data["scope"], form=form)

    def run_query(self, query: list, description: str, k: int, scope: str, form=None):
        try:
            results = service.search(query, k, keyframes_only=scope == "keyframes")
        except similarity.SimilarityError as exc:
            extra = {"form": form} if form is not None else {}
            code = 503 if isinstance(exc, service.IndexUnavailable) else 200
            ctx = self.get_context_data(query_error=str(exc), **extra)
            return self.render_to_response(ctx, status=code)
        query_id = save_results(
            RESULTS_KIND,
            {"description": description, "results": results, "scope": scope},
            user=self.request.user,
        )
        return redirect(reverse("retrieval:similar") + "?" + urlencode({"query": query_id}))

    def results_context(self, entry: dict[str, Any], query_id: str) -> dict[str, Any]:
        request = self.request
        rows, cols = grid_size(request.user)
        per_page = rows * cols
        pairs = [(int(i), float(d)) for i, d in entry["results"]]
        page_rows, number, _first = slice_page(request, pairs, per_page)
        ids = [i for i, _ in page_rows]
        images = Image.objects.select_related("video", "shot").in_bulk(ids)
        scope = entry.get("scope", "keyframes")
        items = []
        for i, distance in page_rows:
            if i not in images:
                continue
            item = image_item(images[i], None, extra=f"distance {distance:.0f}")
            item["similar_url"] = similar_url(i, scope)
            items.append(item)
        grid_page = list_grid_page(items, number=number, per_page=per_page, total=len(pairs))
        grid = GridSpec(
            items=items,
            save_url="",
            category_id=None,
            source=Source.SIMILARITY,
            page=page_links(request, grid_page),
            rows=rows,
            cols=cols,
            prefs_url=reverse("annotation:grid_prefs"),
            readonly=True,
            empty_message=(
                "No similar keyframes found. Try “all images”, or another query image."
                if scope == "keyframes"
                else "The index returned no similar images."
            ),
        ).as_dict()
        return {"grid": grid, "query_id": query_id, "query": entry}


class SimilarIndexView(RoleRequiredMixin, View):
    """``retrieval:similar_index`` (POST, trainers): build or complete the index."""

    min_role = Role.TRAINER

    def post(self, request: HttpRequest, *args, **kwargs):
        version = service.active_version()
        if version is None:
            return self._fit_first(request)
        # New-images jobs may be running: this full run then waits for them (one writer
        # per index) and indexes whatever is still missing.
        _job, started = service.start_index_job(
            {"fit_if_missing": True},
            user=request.user,
            title="Index the archive for similarity search",
            coalesce=Job.ACTIVE,
        )
        if not started:
            messages.info(request, "The index is already being built; see its progress below.")
            return redirect("retrieval:similar")
        messages.success(
            request,
            f"Indexing started with hashing model v{version.version}. Search works as soon "
            "as the first images are indexed.",
        )
        return redirect("retrieval:similar")

    def _fit_first(self, request: HttpRequest):
        """No hashing model yet: fit unsupervised codes through the "Hash codes" page's
        own start (one hashing job at a time, device checks, backbone weights); the fit
        job starts the indexing job when it is done."""
        from ..hashing.service import HashingRefused, start_fit

        try:
            start_fit(request.user, {"device": "auto"})
        except HashingRefused as exc:
            messages.error(request, str(exc))
            return redirect("retrieval:similar")
        messages.success(
            request,
            "No hashing model yet: a job fits unsupervised hash codes first, then indexes "
            "every image. Search works as soon as the first images are indexed.",
        )
        return redirect("retrieval:similar")


def _maybe_reverse(name: str) -> str | None:
    from django.urls import NoReverseMatch

    try:
        return reverse(name)
    except NoReverseMatch:
        return None
