"""Dataset overview: label counts per concept, the threshold, training/validation totals."""

from __future__ import annotations

from django.views.generic import TemplateView

from viva.roles import Role, RoleRequiredMixin

from ..label_matrix import dataset_overview


class DatasetOverviewView(RoleRequiredMixin, TemplateView):
    """Bar chart and table of what a run started now would train on.

    The counts come from :func:`training.label_matrix.dataset_overview`: label counts
    from one grouped query, and "training"/"validation" from the trainer's split rule
    applied per concept (30 positives and 20 % of the negatives go to validation) rather
    than from a drawn split, so the page stays cheap; its docstring says how close that
    is to the split a run draws."""

    min_role = Role.ANNOTATOR
    template_name = "training/overview.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        overview = dataset_overview()
        threshold = overview["min_positives"]
        concepts = overview["concepts"]
        for c in concepts:
            c["missing"] = max(0, threshold - c["positives"])
        ctx.update(
            overview=overview,
            concepts=concepts,
            totals=overview["totals"],
            threshold=threshold,
            below=[c for c in concepts if not c["eligible"]],
            val_negative_percent=round(100 * overview["val_negative_fraction"]),
            chart_data={
                "threshold": threshold,
                "concepts": [
                    {
                        "name": c["name"],
                        "positives": c["positives"],
                        "negatives": c["negatives"],
                        "neutral": c["neutral"],
                        "eligible": c["eligible"],
                    }
                    for c in concepts
                ],
            },
        )
        return ctx
