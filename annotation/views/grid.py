"""The label page: the selected category's candidates, or archive images, in the grid.

Tabs: "unlabelled" candidates (default; what an archivist works through after a
crawl, upload, similarity search or sequence import), "all" candidates (to correct),
and "archive" (browse keyframes by collection and video and label them directly).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.shortcuts import redirect
from django.urls import NoReverseMatch, reverse
from django.views.generic import TemplateView

from viva.models import Collection, Video
from viva.roles import Role, RoleRequiredMixin, has_role

from ..grid import (
    GridPage,
    GridSpec,
    archive_page,
    candidate_page,
    grid_size,
    page_links,
    parse_page_args,
)
from ..models import Category, Source
from ..selection import CategoryRequiredMixin

TABS = [("unlabelled", "Unlabelled candidates"), ("all", "All candidates"), ("archive", "Archive")]
MAX_VIDEO_CHOICES = 1000


def build_grid(
    request: HttpRequest,
    grid_page: GridPage,
    category: Category,
    *,
    source: str,
    rows: int,
    cols: int,
    readonly: bool | None = None,
    save_next_url: str | None = None,
    empty_message: str = "Nothing to show here.",
) -> dict[str, Any]:
    """The contract dict for archive images of ``category`` (save via ``save_labels``)."""
    if readonly is None:
        readonly = not has_role(request.user, Role.ANNOTATOR)
    return GridSpec(
        items=grid_page.items,
        save_url=reverse("annotation:save_labels"),
        category_id=category.pk,
        source=source,
        page=page_links(request, grid_page),
        rows=rows,
        cols=cols,
        prefs_url=reverse("annotation:grid_prefs"),
        readonly=readonly,
        save_next_url=save_next_url,
        empty_message=empty_message,
    ).as_dict()


def _int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def acquisition_links() -> list[tuple[str, str]]:
    """Pages that add candidates (built by the acquisition work; shown when present)."""
    links = []
    for name, label in [
        ("annotation:crawl", "Web search"),
        ("annotation:upload", "Upload / URL"),
        ("annotation:similar", "Similar images"),
        ("annotation:sequence_import", "Sequence import"),
    ]:
        try:
            links.append((reverse(name), label))
        except NoReverseMatch:
            continue
    return links


class LabelView(RoleRequiredMixin, CategoryRequiredMixin, TemplateView):
    """Label the selected category's candidates (or archive images) in the grid."""

    min_role = Role.ANNOTATOR
    template_name = "annotation/label.html"

    def get(self, request: HttpRequest, *args, **kwargs):
        if self.category.kind == Category.Kind.PERSON:
            # Persons are labelled by their faces (clusters first), not by whole images.
            return redirect(reverse("annotation:person_clusters") + f"?category={self.category.pk}")
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        request, category = self.request, self.category
        tab = request.GET.get("tab", "unlabelled")
        if tab not in dict(TABS):
            tab = "unlabelled"
        rows, cols = grid_size(request.user)
        number, after = parse_page_args(request)
        per_page = rows * cols
        save_next_url = None
        if tab == "archive":
            collection_id = _int(request.GET.get("collection"))
            video_id = _int(request.GET.get("video"))
            unlabelled = request.GET.get("unlabelled") == "1"
            grid_page = archive_page(
                category,
                collection_id=collection_id,
                video_id=video_id,
                page=number,
                per_page=per_page,
                after=after,
                unlabelled_only=unlabelled,
            )
            videos = []
            if collection_id:
                videos = list(
                    Video.objects.filter(collection_id=collection_id)
                    .order_by("title", "id")
                    .values("id", "title")[:MAX_VIDEO_CHOICES]
                )
            ctx.update(
                collections=list(Collection.objects.order_by("name").values("id", "name")),
                videos=videos,
                collection_id=collection_id,
                video_id=video_id,
                unlabelled=unlabelled,
            )
            empty = "No images match these filters."
        else:
            grid_page = candidate_page(
                category,
                page=number,
                per_page=per_page,
                after=after,
                unlabelled_only=tab == "unlabelled",
            )
            if tab == "unlabelled" and grid_page.next_cursor is None:
                # Last page of unlabelled candidates: saving removes them from the list,
                # so "save and next" reloads the list to show whatever is left.
                save_next_url = request.path + "?tab=unlabelled"
            empty = (
                "All candidates of this category are labelled."
                if tab == "unlabelled"
                else "This category has no candidates yet."
            )
        ctx.update(
            tab=tab,
            tabs=TABS,
            grid=build_grid(
                request,
                grid_page,
                category,
                source=Source.GRID,
                rows=rows,
                cols=cols,
                save_next_url=save_next_url,
                empty_message=empty,
            ),
            acquisition_links=acquisition_links(),
        )
        return ctx
