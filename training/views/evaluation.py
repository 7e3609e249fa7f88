"""Evaluation page: per-concept AP of a version beside the version it is compared with."""

from __future__ import annotations

from django.http import Http404
from django.views.generic import TemplateView

from viva.roles import Role, RoleRequiredMixin

from .. import queries
from ..registry import baseline_for, compare_versions, list_versions
from .common import diff_class, pct, pct_number, pp


def _number(request, name: str) -> int | None:
    raw = request.GET.get(name, "")
    if not raw:
        return None
    if not raw.isdigit():
        raise Http404(f"Bad {name}.")
    return int(raw)


def _curve(evaluation) -> dict | None:
    curve = (evaluation.pr_curve or {}) if evaluation is not None else {}
    if not curve.get("precision"):
        return None
    return {"precision": curve["precision"], "recall": curve["recall"]}


KINDS = {"concept": "concept", "person": "person"}


class EvaluationView(RoleRequiredMixin, TemplateView):
    """``?version=N`` (default: the newest) against ``?baseline=M`` (default: the version
    that was active when N was trained, else the next older one). ``?kind=person``
    shows person models (per-person AP from cross-validation); the default is concepts.

    The numbers are the :class:`training.models.Evaluation` rows the trainer stored
    (scikit-learn's ``average_precision_score`` on each version's own validation split),
    formatted once here; the page sorts them in the browser."""

    min_role = Role.TRAINER
    template_name = "training/evaluation.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        kind = KINDS.get(self.request.GET.get("kind", ""), "concept")
        versions = list(list_versions(kind))
        ctx["versions"] = versions
        ctx["kind"] = kind
        if not versions:
            return ctx
        number = _number(self.request, "version")
        version = queries.get_version(number, kind) if number is not None else versions[0]
        if version is None:
            raise Http404("No such model version.")
        base_number = _number(self.request, "baseline")
        if base_number is not None:
            baseline = queries.get_version(base_number, kind)
            if baseline is None or baseline.pk == version.pk:
                raise Http404("No such baseline version.")
        else:
            baseline = baseline_for(version)
        data = compare_versions(version, baseline, use_default=False)
        new_evals = {e.category_name: e for e in version.evaluations.all()}
        old_evals = {e.category_name: e for e in baseline.evaluations.all()} if baseline else {}
        rows, curves = [], {}
        for r in data["rows"]:
            rows.append(
                {
                    **r,
                    "ap_text": pct_number(r["ap"]),
                    "previous_text": pct_number(r["previous_ap"]),
                    "diff_text": pp(r["diff"]),
                    "diff_class": diff_class(r["diff"]),
                }
            )
            curves[r["name"]] = {
                "ap": r["ap"],
                "previous_ap": r["previous_ap"],
                "new": _curve(new_evals.get(r["name"])),
                "old": _curve(old_evals.get(r["name"])),
            }
        ctx.update(
            version=version,
            baseline=baseline,
            rows=rows,
            mean_ap=data["mean_ap"],
            previous_mean_ap=data["previous_mean_ap"],
            mean_text=pct(data["mean_ap"]),
            previous_mean_text=pct(data["previous_mean_ap"]),
            mean_diff_text=pp(_diff(data["mean_ap"], data["previous_mean_ap"])),
            mean_diff_class=diff_class(_diff(data["mean_ap"], data["previous_mean_ap"])),
            common=data["common_concepts"],
            mean_common_text=pct(data["mean_ap_common"]),
            previous_mean_common_text=pct(data["previous_mean_ap_common"]),
            better=sum(1 for r in rows if r["diff_class"] == "better"),
            worse=sum(1 for r in rows if r["diff_class"] == "worse"),
            baselines=[v for v in versions if v.pk != version.pk],
            chart_data={
                "version": version.version,
                "baseline": baseline.version if baseline else None,
                "curves": curves,
            },
            can_activate=not version.is_active,
        )
        return ctx


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None
