"""Review pages: the positive, negative or neutral images of the selected category.

Newest label first, in the same grid, so a wrong label is corrected where it is seen
(saved with source "review", so the event log tells corrections from first labels).
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.shortcuts import redirect
from django.urls import reverse
from django.views.generic import TemplateView

from viva.roles import Role, RoleRequiredMixin

from ..grid import grid_size, label_counts, parse_page_args, review_page
from ..models import Category, Label, Source
from ..selection import CategoryRequiredMixin
from .grid import build_grid

VALUES = {"positive": Label.POSITIVE, "negative": Label.NEGATIVE, "neutral": Label.NEUTRAL}


class ReviewView(RoleRequiredMixin, CategoryRequiredMixin, TemplateView):
    """``?value=positive|negative|neutral`` (default positive)."""

    min_role = Role.ANNOTATOR
    template_name = "annotation/review.html"

    def get(self, request, *args, **kwargs):
        if self.category.kind == Category.Kind.PERSON:
            # A person's labels live on faces: review them as face crops.
            query = {"category": self.category.pk}
            if request.GET.get("value") in VALUES:
                query["value"] = request.GET["value"]
            return redirect(reverse("annotation:person_review") + "?" + urlencode(query))
        return super().get(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        request, category = self.request, self.category
        value_name = request.GET.get("value", "positive")
        if value_name not in VALUES:
            value_name = "positive"
        value = VALUES[value_name]
        rows, cols = grid_size(request.user)
        number, after = parse_page_args(request)
        counts, approximate = label_counts(category)
        grid_page = review_page(
            category,
            value,
            page=number,
            per_page=rows * cols,
            after=after,
            total=(counts.get(value, 0), approximate),
        )
        ctx.update(
            value=value_name,
            tabs=[(name, counts.get(v, 0)) for name, v in VALUES.items()],
            counts_approximate=approximate,
            grid=build_grid(
                request,
                grid_page,
                category,
                source=Source.REVIEW,
                rows=rows,
                cols=cols,
                empty_message=f"No {value_name} labels for “{category.name}” yet.",
            ),
        )
        return ctx
