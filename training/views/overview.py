"""Dataset overview: label counts per concept, the threshold, training/validation totals."""

from __future__ import annotations

from django.views.generic import TemplateView

from viva.roles import Role, RoleRequiredMixin

from ..dataset import dataset_overview


class DatasetOverviewView(RoleRequiredMixin, TemplateView):
    """Bar chart and table of what a run started now would train on.

    The counts and the split come from :func:`training.dataset.dataset_overview`, the
    same code the trainer uses, so "training" and "validation" here are the numbers the
    next run will really have (30 positives and 20 % of the negatives per concept go to
    validation, seeded)."""

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
