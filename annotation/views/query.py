"""Upload / URL and similar images (issue 3, item 6).

``annotation:upload`` adds uploaded images, or images fetched from pasted URLs, to the
selected category's candidates (optionally labelled positive at once).

``annotation:similar`` sends a query — uploaded / URL images, one archive image
(``?image=<id>``, the grid's "similar" link) or the category's positive images ("find more
like these") — to :func:`annotation.similarity.similar_images`. Until the similarity issue
plugs the archive index in, the page says that the index is not built; it never shows
made-up results.

Bad input (not an image, too large, a decompression bomb, an unreachable or private URL)
gets a clear message per file or URL, and nothing is stored.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.http import HttpRequest
from django.shortcuts import redirect
from django.urls import reverse
from django.views.generic import TemplateView

from viva.models import Image
from viva.roles import Role, RoleRequiredMixin
from viva.views.archive import MultipleFileField

from .. import similarity
from ..acquisition import (
    DOWNLOAD_MAX_BYTES,
    AcquisitionError,
    IncomingImage,
    add_candidates,
    add_images_to_category,
    check_uploaded_bytes,
    fetch_urls,
    load_results,
    save_results,
)
from ..grid import GridSpec, grid_size, image_item, page_links
from ..models import Annotation, Label, Source
from ..selection import CategoryRequiredMixin
from .acquire import label_grid_url, list_grid_page, slice_page

MAX_FILES = 50
MAX_TOTAL_BYTES = 200 * 2**20
MAX_URLS = 20
MAX_POSITIVES = 200


def positive_image_ids(category) -> list[int]:
    """The newest :data:`MAX_POSITIVES` positive images of a category: the query of
    "more like these" on every page and in the API."""
    return list(
        Annotation.objects.filter(category=category, value=Label.POSITIVE, face__isnull=True)
        .order_by("-updated_at")
        .values_list("image_id", flat=True)[:MAX_POSITIVES]
    )


class ImageInputForm(forms.Form):
    """Images given by the user: uploaded files and/or pasted URLs (one per line)."""

    files = MultipleFileField(label="Image files", required=False)
    urls = forms.CharField(
        label="Image URLs (one per line)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "https://…/image.jpg"}),
    )

    def clean_files(self) -> list:
        files = [f for f in (self.cleaned_data.get("files") or []) if f]
        if len(files) > MAX_FILES:
            raise forms.ValidationError(f"At most {MAX_FILES} files at once.")
        if sum(f.size for f in files) > MAX_TOTAL_BYTES:
            raise forms.ValidationError(
                f"The files are larger than {MAX_TOTAL_BYTES // 2**20} MB together."
            )
        return files

    def clean_urls(self) -> list[str]:
        urls = [u.strip() for u in (self.cleaned_data.get("urls") or "").splitlines()]
        urls = list(dict.fromkeys(u for u in urls if u))
        if len(urls) > MAX_URLS:
            raise forms.ValidationError(f"At most {MAX_URLS} URLs at once.")
        return urls

    def has_input(self) -> bool:
        return bool(self.cleaned_data.get("files") or self.cleaned_data.get("urls"))

    def load_images(self) -> tuple[list[IncomingImage], list[str]]:
        """Read and verify every file, fetch every URL; nothing is stored here."""
        images: list[IncomingImage] = []
        errors: list[str] = []
        for upload in self.cleaned_data.get("files") or []:
            if upload.size > DOWNLOAD_MAX_BYTES:
                errors.append(
                    f"{upload.name}: the file is larger than {DOWNLOAD_MAX_BYTES // 2**20} MB."
                )
                continue
            try:
                images.append(check_uploaded_bytes(upload.read(), upload.name))
            except AcquisitionError as exc:
                errors.append(str(exc))
        fetched, url_errors = fetch_urls(self.cleaned_data.get("urls") or [])
        return images + fetched, errors + url_errors


class UploadForm(ImageInputForm):
    label_positive = forms.BooleanField(
        label="Label them positive right away", required=False, initial=True
    )

    def clean(self):
        data = super().clean()
        if not self.errors and not self.has_input():
            raise forms.ValidationError("Choose image files or paste image URLs.")
        return data


class UploadView(RoleRequiredMixin, CategoryRequiredMixin, TemplateView):
    """``annotation:upload``: add images to the selected category's candidates."""

    min_role = Role.ANNOTATOR
    template_name = "annotation/query.html"
    page_kind = "upload"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx.setdefault("form", UploadForm())
        ctx["page_kind"] = self.page_kind
        ctx.update(
            label_url=label_grid_url(),
            max_files=MAX_FILES,
            max_urls=MAX_URLS,
            max_mb=DOWNLOAD_MAX_BYTES // 2**20,
        )
        return ctx

    def post(self, request: HttpRequest, *args, **kwargs):
        form = UploadForm(request.POST, request.FILES)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form), status=400)
        images, problems = form.load_images()
        if problems:
            ctx = self.get_context_data(form=form, problems=problems)
            return self.render_to_response(ctx, status=400)
        report = add_images_to_category(
            images,
            self.category,
            user=request.user,
            label_positive=form.cleaned_data["label_positive"],
        )
        text = (
            f"{len(report.image_ids)} image(s) added to “{self.category.name}”: "
            f"{report.imported} new, {report.already_stored} already stored, "
            f"{report.new_candidates} new candidate(s)"
        )
        if report.labels_saved:
            text += f", {report.labels_saved} labelled positive"
        messages.success(request, text + ".")
        return redirect("annotation:upload")


# --------------------------------------------------------------------------
# Similar images
# --------------------------------------------------------------------------


class SimilarForm(ImageInputForm):
    MODES = [
        ("positives", "the positive images of the category"),
        ("images", "uploaded images / URLs"),
    ]
    mode = forms.ChoiceField(choices=MODES, initial="positives", required=False)
    k = forms.IntegerField(
        label="Results",
        min_value=1,
        max_value=similarity.MAX_K,
        initial=similarity.DEFAULT_K,
        required=False,
    )

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        data["k"] = data.get("k") or similarity.DEFAULT_K
        if not data.get("mode"):
            data["mode"] = "images" if self.has_input() else "positives"
        if data["mode"] == "images" and not self.has_input():
            raise forms.ValidationError("Choose image files or paste image URLs to search with.")
        return data


class SimilarView(RoleRequiredMixin, CategoryRequiredMixin, TemplateView):
    """``annotation:similar``: query by example; results in the grid once the index exists."""

    min_role = Role.ANNOTATOR
    template_name = "annotation/query.html"
    page_kind = "similar"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        built, message = similarity.index_status()
        ctx.setdefault("form", SimilarForm(initial={"k": similarity.DEFAULT_K}))
        ctx["page_kind"] = self.page_kind
        ctx.update(
            index_built=built,
            index_message=message,
            label_url=label_grid_url(),
            max_positives=MAX_POSITIVES,
            n_positives=Annotation.objects.filter(
                category=self.category, value=Label.POSITIVE, face__isnull=True
            ).count(),
        )
        return ctx

    def get(self, request: HttpRequest, *args, **kwargs):
        query_id = request.GET.get("query", "")
        if query_id:
            entry = load_results("similar", query_id, user=request.user)
            if entry is None:
                messages.warning(request, "These results have expired; please search again.")
                return redirect("annotation:similar")
            ctx = self.get_context_data(**self.results_context(entry, query_id))
            return self.render_to_response(ctx)
        image_id = request.GET.get("image", "")
        if image_id.isdigit():
            image = Image.objects.filter(pk=int(image_id)).first()
            if image is None:
                messages.error(request, "This image no longer exists.")
                return redirect("annotation:similar")
            return self.run_query([image.pk], f"image {image}", similarity.DEFAULT_K)
        return self.render_to_response(self.get_context_data())

    def post(self, request: HttpRequest, *args, **kwargs):
        if request.POST.get("action") == "add_candidates":
            return self.add_all(request.POST.get("query", ""))
        form = SimilarForm(request.POST, request.FILES)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form), status=400)
        k = form.cleaned_data["k"]
        if form.cleaned_data["mode"] == "positives":
            ids = positive_image_ids(self.category)
            if not ids:
                ctx = self.get_context_data(
                    form=form,
                    problems=[
                        f"“{self.category.name}” has no positive images yet; label some first, "
                        "or search with an uploaded image or URL."
                    ],
                )
                return self.render_to_response(ctx, status=400)
            return self.run_query(
                ids, f"{len(ids)} positive image(s) of “{self.category}”", k, form=form
            )
        images, problems = form.load_images()
        if problems:
            ctx = self.get_context_data(form=form, problems=problems)
            return self.render_to_response(ctx, status=400)
        names = ", ".join(i.name for i in images[:3]) + (" …" if len(images) > 3 else "")
        return self.run_query([i.to_pil() for i in images], names, k, form=form)

    def run_query(self, query: list, description: str, k: int, form=None):
        """Ask the similarity function; show its message when it cannot answer."""
        try:
            results = similarity.similar_images(query, k)
        except similarity.SimilarityError as exc:
            ctx = self.get_context_data(query_error=str(exc), **({"form": form} if form else {}))
            return self.render_to_response(ctx)
        query_id = save_results(
            "similar",
            {"description": description, "results": results},
            user=self.request.user,
        )
        return redirect(reverse("annotation:similar") + "?" + urlencode({"query": query_id}))

    def results_context(self, entry: dict[str, Any], query_id: str) -> dict[str, Any]:
        request = self.request
        rows, cols = grid_size(request.user)
        per_page = rows * cols
        pairs = [(int(i), float(d)) for i, d in entry["results"]]
        page_rows, number, _first = slice_page(request, pairs, per_page)
        ids = [i for i, _ in page_rows]
        labels = dict(
            Annotation.objects.filter(
                category=self.category, face__isnull=True, image_id__in=ids
            ).values_list("image_id", "value")
        )
        images = Image.objects.select_related("video", "shot").in_bulk(ids)
        items = [
            image_item(images[i], labels.get(i), extra=f"distance {d:.3g}")
            for i, d in page_rows
            if i in images
        ]
        grid_page = list_grid_page(items, number=number, per_page=per_page, total=len(pairs))
        grid = GridSpec(
            items=items,
            save_url=reverse("annotation:save_labels"),
            category_id=self.category.pk,
            source=Source.SIMILARITY,
            page=page_links(request, grid_page),
            rows=rows,
            cols=cols,
            prefs_url=reverse("annotation:grid_prefs"),
            empty_message="The archive index returned no images.",
        ).as_dict()
        return {"grid": grid, "query_id": query_id, "query": entry}

    def add_all(self, query_id: str):
        entry = load_results("similar", query_id, user=self.request.user)
        if entry is None:
            messages.warning(self.request, "These results have expired; please search again.")
            return redirect("annotation:similar")
        scores = {int(i): float(d) for i, d in entry["results"]}
        existing = set(Image.objects.filter(pk__in=list(scores)).values_list("pk", flat=True))
        added = add_candidates(
            self.category,
            existing,
            source=Source.SIMILARITY,
            user=self.request.user,
            scores=scores,
        )
        messages.success(self.request, f"{added} new candidate(s) added to “{self.category.name}”.")
        return redirect(reverse("annotation:similar") + "?" + urlencode({"query": query_id}))
