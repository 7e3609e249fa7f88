"""The model registry page: every concept (or person) model version, and activating an
older one. ``?kind=person`` lists the person recognisers."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views import View
from django.views.generic import TemplateView

from viva.roles import Role, RoleRequiredMixin

from ..errors import TrainingError
from ..models import ModelVersion
from ..registry import activate, list_versions
from .common import pct


def _setup(version: ModelVersion) -> str:
    """``"efficientnet-b3 · 300 px · loss C"`` from the stored config."""
    network = (version.config.get("network") or {}).get("name", "")
    size = (version.config.get("preprocessing") or {}).get("image_size")
    preset = (version.train_config or {}).get("loss_preset")
    parts = [network, f"{size} px" if size else "", f"loss {preset}" if preset else ""]
    return " · ".join(p for p in parts if p)


class ModelListView(RoleRequiredMixin, TemplateView):
    """Newest first, with the active badge; older versions get an "Activate" button
    (a rollback when a new model turned out worse on the evaluation page)."""

    min_role = Role.TRAINER
    template_name = "training/models.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        kind = _kind(self.request.GET.get("kind"))
        versions = list(list_versions(kind).select_related("job", "previous"))
        for v in versions:
            v.map_text = pct(v.mean_ap)
            v.setup_text = _setup(v)
            source = v.weights_source or {}
            v.weights_text = source.get("description") or source.get("source") or "—"
        ctx["versions"] = versions
        ctx["kind"] = kind
        return ctx


def _kind(raw: str | None) -> str:
    person = ModelVersion.Kind.PERSON
    return person if raw == person else ModelVersion.Kind.CONCEPT


class ActivateVersionView(RoleRequiredMixin, View):
    """POST: make a version the active one (inference and retrieval use it)."""

    min_role = Role.TRAINER

    def post(self, request, pk: int):
        version = get_object_or_404(ModelVersion, pk=pk)
        try:
            activate(version)
        except TrainingError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(
                request,
                f"v{version.version} is now the active {version.kind} model (validation "
                f"mAP {pct(version.mean_ap)}); inference and retrieval use it from now on.",
            )
        url = reverse("training:models")
        return redirect(url + ("?kind=person" if version.kind == ModelVersion.Kind.PERSON else ""))
