"""One-click training: devices, the start button, advanced options, the live run."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpResponseRedirect
from django.urls import reverse
from django.views.generic import TemplateView

from viva.roles import Role, RoleRequiredMixin

from .. import queries
from ..config import TrainConfig
from ..constants import PRESETS
from ..errors import TrainingRefused
from ..network_specs import get_spec
from ..registry import active_version
from ..services import check_start_weights, list_devices, start_training
from .common import gib, pct

DEFAULTS = TrainConfig()
INIT_CHOICES = [
    ("pretrained", "ImageNet weights (recommended)"),
    ("random", "Random initialisation (tests, demo)"),
]


def _preset_label(name: str) -> str:
    p = PRESETS[name]
    return f"{name}: α pos {p.alpha_pos:g} · α neg {p.alpha_neg:g} · α weak {p.alpha_weak:g}"


class TrainForm(forms.Form):
    """The start button and the advanced fold. Every field has the thesis' default, so
    pressing "Start training" without opening the fold is the recommended run; values are
    checked again by :class:`training.config.TrainConfig` inside ``start_training``."""

    device = forms.ChoiceField(
        widget=forms.RadioSelect,
        error_messages={
            "invalid_choice": "The device %(value)s is not available (any more); choose "
            "another one from the list.",
            "required": "Choose a device.",
        },
    )
    network = forms.ChoiceField(label="Backbone", initial=DEFAULTS.network)
    init = forms.ChoiceField(label="Start from", choices=INIT_CHOICES, initial=DEFAULTS.init)
    image_size = forms.IntegerField(
        label="Image size (px)",
        required=False,
        min_value=32,
        max_value=1024,
        help_text="Empty: the backbone's own size (300 px for B3).",
    )
    batch_size = forms.IntegerField(
        label="Batch size",
        min_value=1,
        max_value=1024,
        initial=DEFAULTS.batch_size,
        help_text="Smaller if the GPU runs out of memory.",
    )
    epochs_phase1 = forms.IntegerField(
        label="Epochs, phase 1 (head)",
        min_value=0,
        max_value=500,
        initial=DEFAULTS.epochs_phase1,
    )
    epochs_phase2 = forms.IntegerField(
        label="Epochs, phase 2 (fine-tuning)",
        min_value=0,
        max_value=500,
        initial=DEFAULTS.epochs_phase2,
        help_text="Early stopping usually ends sooner.",
    )
    loss_preset = forms.ChoiceField(
        label="Loss weights",
        widget=forms.RadioSelect,
        initial=DEFAULTS.loss_preset,
        choices=[(name, _preset_label(name)) for name in PRESETS],
    )
    min_positives = forms.IntegerField(
        label="Minimum positives per concept",
        min_value=2,
        help_text="Concepts with fewer positive labels are left out.",
    )

    def __init__(self, *args, devices: list[dict], **kwargs):
        super().__init__(*args, **kwargs)
        self.devices = devices
        self.fields["device"].choices = [(d["id"], d["name"]) for d in devices]
        free = [d for d in devices if not d["busy"] and not d["low_memory"]]
        self.fields["device"].initial = (free or devices or [{"id": "cpu"}])[0]["id"]
        networks = queries.network_choices()
        self.fields["network"].choices = [
            (
                "EfficientNet (ImageNet-initialised)",
                [(name, description) for name, description, _s, pre in networks if pre],
            ),
            (
                "Small test networks (random initialisation)",
                [(name, description) for name, description, _s, pre in networks if not pre],
            ),
        ]
        self.fields["min_positives"].initial = int(
            getattr(settings, "VIVA_TRAIN_MIN_POSITIVES", 100)
        )

    def clean(self):
        data = super().clean()
        network = data.get("network")
        if not network:
            return data
        if get_spec(network).pretrained is None:
            # Test/demo networks have no ImageNet weights: random init is the only choice.
            data["init"] = "random"
        else:
            # The service refuses such a start too; here the message marks the field.
            try:
                check_start_weights(network, data.get("init") or "")
            except TrainingRefused as exc:
                self.add_error("init", str(exc))
        return data

    def options(self) -> dict:
        """The options dict of :func:`training.services.start_training`."""
        data = self.cleaned_data
        keys = (
            "device",
            "network",
            "init",
            "image_size",
            "batch_size",
            "epochs_phase1",
            "epochs_phase2",
            "loss_preset",
            "min_positives",
        )
        return {k: data[k] for k in keys if data.get(k) is not None}


class TrainView(RoleRequiredMixin, TemplateView):
    """GET: devices, start form, the current run (live) and recent runs.
    POST: start a run; a refusal (no concept above the threshold, device gone or busy,
    bad options) re-renders the page with the message and creates no job."""

    min_role = Role.TRAINER
    template_name = "training/train.html"

    def _job_id(self) -> int | None:
        raw = self.request.GET.get("job", "")
        if not raw:
            return None
        if not raw.isdigit():
            raise Http404("No such training run.")
        return int(raw)

    def get_context_data(self, form: TrainForm | None = None, **kwargs):
        ctx = super().get_context_data(**kwargs)
        devices = form.devices if form is not None else list_devices()
        for d in devices:
            d["free_text"] = gib(d["free_bytes"])
            d["total_text"] = gib(d["total_bytes"])
        form = form or TrainForm(devices=devices)
        job_id = self._job_id()
        run = queries.current_run(job_id)
        if job_id is not None and run is None:
            raise Http404("No such training run.")
        threshold = form["min_positives"].value() or form.fields["min_positives"].initial
        try:
            threshold = int(threshold)
        except (TypeError, ValueError):
            threshold = form.fields["min_positives"].initial
        eligible, concepts = queries.eligible_concept_count(threshold)
        active = active_version()
        run_version = queries.version_of_job(run) if run else None
        networks = queries.network_choices()
        ctx.update(
            form=form,
            devices=devices,
            threshold=threshold,
            eligible=eligible,
            concepts=concepts,
            active=active,
            active_map=pct(active.mean_ap) if active else None,
            run=run,
            run_version=run_version,
            runs=queries.training_jobs(10),
            presets=[
                {
                    "name": p.name,
                    "alpha_pos": p.alpha_pos,
                    "alpha_neg": p.alpha_neg,
                    "alpha_weak": p.alpha_weak,
                    "gamma": p.gamma,
                    "description": p.description,
                    "checked": str(form["loss_preset"].value()) == p.name,
                }
                for p in PRESETS.values()
            ],
            networks_info={
                name: {
                    "size": size,
                    "pretrained": pre,
                    "weights": queries.weights_status(name)["text"],
                }
                for name, _description, size, pre in networks
            },
            default_network=DEFAULTS.network,
        )
        return ctx

    def post(self, request, *args, **kwargs):
        form = TrainForm(request.POST, devices=list_devices())
        if form.is_valid():
            try:
                job = start_training(request.user, form.options())
            except TrainingRefused as exc:
                messages.error(request, f"Training was not started: {exc}")
            else:
                messages.success(
                    request,
                    f"Training started on {job.device or form.cleaned_data['device']} "
                    f"(job {job.pk}). You can leave this page; the run goes on.",
                )
                return HttpResponseRedirect(f"{reverse('training:train')}?job={job.pk}")
        else:
            messages.error(
                request, "Training was not started: please correct the options marked below."
            )
        return self.render_to_response(self.get_context_data(form=form), status=200)
