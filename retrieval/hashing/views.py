"""The "Hash codes" page (issue 6): the active hashing model, fitting unsupervised codes,
training a deep hashing model, versions, and the live progress of the running job.

Role: **trainer** for everything (GET and POST): starting a fit or a training run uses
compute for everyone, and activating a version changes the codes every similarity
search uses — as for concept models (``training.views``). The menu lists the page for
trainers (``viva/context.py``).
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import Http404, HttpResponseRedirect
from django.urls import NoReverseMatch, reverse
from django.views.generic import TemplateView

from training.devices import list_devices
from training.errors import TrainingError
from training.queries import network_choices, weights_status
from training.registry import activate
from viva.models import Job
from viva.roles import Role, RoleRequiredMixin

from . import service
from .options import HashingOptions, default_network

DEFAULTS = HashingOptions()
INIT_CHOICES = [
    ("pretrained", "ImageNet weights (recommended)"),
    ("random", "Random initialisation (tests, demo: meaningless codes)"),
]


def _network_field() -> forms.ChoiceField:
    return forms.ChoiceField(
        label="Backbone",
        initial=default_network,
        choices=[(name, description) for name, description, _size, _pre in network_choices()],
    )


class FitForm(forms.Form):
    sample_size = forms.IntegerField(
        label="Sample of archive images",
        min_value=2,
        max_value=10_000_000,
        initial=20000,
        help_text="PCA and the ITQ rotation are fitted on this many random images.",
    )
    network = _network_field()
    init = forms.ChoiceField(label="Start from", choices=INIT_CHOICES, initial="pretrained")
    device = forms.ChoiceField(label="Device")


class DeepForm(forms.Form):
    category_ids = forms.MultipleChoiceField(
        label="Categories",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every concept with enough positives.",
    )
    min_positives = forms.IntegerField(
        label="Minimum positives per category",
        min_value=2,
        initial=service.DEFAULT_MIN_POSITIVES,
    )
    epochs = forms.IntegerField(label="Epochs", min_value=1, max_value=500, initial=DEFAULTS.epochs)
    batch_size = forms.IntegerField(
        label="Batch size", min_value=4, max_value=4096, initial=DEFAULTS.batch_size
    )
    network = _network_field()
    init = forms.ChoiceField(label="Start from", choices=INIT_CHOICES, initial="pretrained")
    device = forms.ChoiceField(label="Device")


def _device_choices() -> list[tuple[str, str]]:
    return [(d["id"], f"{d['name']}{' (busy)' if d['busy'] else ''}") for d in list_devices()]


def _similar_url() -> str:
    try:
        return reverse("retrieval:similar")
    except NoReverseMatch:
        return "/retrieve/similar/"


def describe_version(version) -> dict:
    """What the page shows of a version, formatted on the server."""
    source = version.weights_source or {}
    metrics = version.metrics or {}
    method = (version.config or {}).get("method", "?")
    return {
        "version": version,
        "method": method,
        "method_text": {
            "itq": "unsupervised (PCA + ITQ)",
            "deep": "deep hashing (CE + triplet)",
        }.get(method, method),
        "network": (version.config or {}).get("network", {}).get("name", "?"),
        "random_weights": source.get("source") == "random",
        "weights_text": source.get("description") or "unknown",
        "map_text": "—" if version.mean_ap is None else f"{100 * version.mean_ap:.1f} %",
        "chance_text": (
            f"{100 * metrics['chance_map']:.1f} %" if "chance_map" in metrics else None
        ),
        "classes": version.num_classes,
        "sample_images": metrics.get("sample_images"),
        "has_permutation": "permutation" in (version.config or {}),
    }


class HashingView(RoleRequiredMixin, TemplateView):
    """GET: the page. POST ``action`` = ``fit`` | ``train`` | ``activate``; a refusal
    re-renders the page with the message and creates no job."""

    min_role = Role.TRAINER
    template_name = "retrieval/hashing.html"

    def _run(self) -> Job | None:
        raw = self.request.GET.get("job", "")
        jobs = Job.objects.filter(kind__in=service.JOB_KINDS).select_related("created_by")
        if raw:
            if not raw.isdigit():
                raise Http404("No such hashing job.")
            job = jobs.filter(pk=int(raw)).first()
            if job is None:
                raise Http404("No such hashing job.")
            return job
        return jobs.order_by("-created_at").first()

    def get_context_data(self, fit_form=None, deep_form=None, **kwargs):
        from retrieval.models import HashCode
        from viva.models import Image

        ctx = super().get_context_data(**kwargs)
        devices = _device_choices()
        fit_form = fit_form or FitForm()
        deep_form = deep_form or DeepForm()
        categories = service.category_choices(
            _int(deep_form["min_positives"].value(), service.DEFAULT_MIN_POSITIVES)
        )
        for form in (fit_form, deep_form):
            form.fields["device"].choices = devices
        deep_form.fields["category_ids"].choices = [
            (str(c["id"]), f"{c['name']} ({c['positives']})") for c in categories
        ]
        active = service.active_hashing_version()
        versions = [describe_version(v) for v in service.list_hashing_versions()]
        indexed = HashCode.objects.filter(version=active).count() if active else 0
        ctx.update(
            fit_form=fit_form,
            deep_form=deep_form,
            categories=categories,
            eligible=sum(1 for c in categories if c["eligible"]),
            active=describe_version(active) if active else None,
            versions=versions,
            run=self._run(),
            runs=service.hashing_jobs(10),
            running=service.running_job(),
            images=Image.objects.count(),
            indexed=indexed,
            similar_url=_similar_url(),
            weights=weights_status(default_network()),
            random_allowed=service.random_allowed(),
        )
        return ctx

    def post(self, request, *args, **kwargs):
        action = request.POST.get("action")
        if action == "activate":
            return self._activate(request)
        if action not in ("fit", "train"):
            messages.error(request, "Unknown action.")
            return HttpResponseRedirect(reverse("retrieval:hashing"))
        devices = _device_choices()
        form_class = FitForm if action == "fit" else DeepForm
        form = form_class(request.POST)
        form.fields["device"].choices = devices
        if action == "train":
            form.fields["category_ids"].choices = [
                (str(c["id"]), c["name"]) for c in service.category_choices()
            ]
        if form.is_valid():
            data = dict(form.cleaned_data)
            try:
                if action == "fit":
                    job = service.start_fit(request.user, data)
                else:
                    data["category_ids"] = [int(c) for c in data.get("category_ids") or []]
                    job = service.start_deep(request.user, data)
            except service.HashingRefused as exc:
                messages.error(request, f"Nothing was started: {exc}")
            else:
                messages.success(
                    request,
                    f"{job.title} started (job {job.pk}). You can leave this page; the job "
                    "goes on.",
                )
                return HttpResponseRedirect(f"{reverse('retrieval:hashing')}?job={job.pk}")
        else:
            messages.error(request, "Nothing was started: please correct the options below.")
        forms_ = {"fit_form" if action == "fit" else "deep_form": form}
        return self.render_to_response(self.get_context_data(**forms_), status=200)

    def _activate(self, request):
        raw = request.POST.get("version", "")
        version = (
            service.list_hashing_versions().filter(pk=int(raw)).first() if raw.isdigit() else None
        )
        if version is None:
            raise Http404("No such hashing model.")
        if "permutation" not in (version.config or {}):
            messages.error(
                request,
                f"Hashing model v{version.version} has no stored bit permutation, so its codes "
                "cannot be indexed; it was not activated.",
            )
            return HttpResponseRedirect(reverse("retrieval:hashing"))
        try:
            activate(version)
        except TrainingError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(
                request,
                f"Hashing model v{version.version} is active. Re-index the archive so the "
                "similarity search uses its codes.",
            )
        return HttpResponseRedirect(reverse("retrieval:hashing"))


def _int(value, default: int) -> int:
    try:
        return max(2, int(value))
    except (TypeError, ValueError):
        return default
