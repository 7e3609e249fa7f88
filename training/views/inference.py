"""Inference over the archive (issue 5, item 1): devices, collections, the start button,
"add a worker" for a running run, and the live view (progress, ETA, images/s, CPU/GPU).

Trainer and up, like training: a run takes a device for a long time and replaces what
every researcher's retrieval shows. The work itself is :mod:`retrieval.inference`.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.cache import cache
from django.db.models import Count
from django.http import Http404, HttpResponseRedirect
from django.urls import reverse
from django.views.generic import TemplateView

from retrieval.inference import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_SIZE,
    JOB_KIND,
    InferenceRefused,
    active_jobs,
    add_worker,
    class_map_problem,
    published_run,
    start_inference,
    unfinished_run,
)
from retrieval.models import InferenceRun
from retrieval.persons import inference as person_inference
from viva.models import Collection, Image, Job
from viva.roles import Role, RoleRequiredMixin

from ..devices import list_devices
from ..models import ModelVersion
from ..registry import active_version
from .common import gib

KEYFRAME_COUNT_SECONDS = 60  # a grouped count over 15 M keyframes is not free


def keyframe_counts() -> dict[int, int]:
    """``{collection id: keyframes}``, cached for a minute."""
    counts = cache.get("inference:keyframe-counts")
    if counts is None:
        counts = dict(
            Image.objects.filter(video__isnull=False)
            .values("collection")
            .annotate(n=Count("pk"))
            .values_list("collection", "n")
        )
        cache.set("inference:keyframe-counts", counts, KEYFRAME_COUNT_SECONDS)
    return counts


class InferenceForm(forms.Form):
    device = forms.ChoiceField(
        widget=forms.RadioSelect,
        error_messages={
            "invalid_choice": "The device %(value)s is not available (any more); choose "
            "another one from the list.",
            "required": "Choose a device.",
        },
    )
    collections = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every collection.",
    )
    batch_size = forms.IntegerField(
        label="Batch size",
        required=False,
        min_value=1,
        max_value=1024,
        help_text=f"Empty: {DEFAULT_BATCH_SIZE}. Smaller if the GPU runs out of memory.",
    )

    chunk_size = forms.IntegerField(
        label="Chunk size",
        required=False,
        min_value=1,
        max_value=1_000_000,
        help_text=f"Empty: {DEFAULT_CHUNK_SIZE} keyframes. Larger on fast GPUs (each chunk "
        "starts its loader processes anew).",
    )

    def __init__(self, *args, devices: list[dict], collections: list[dict], **kwargs):
        super().__init__(*args, **kwargs)
        self.devices = devices
        self.fields["device"].choices = [(d["id"], d["name"]) for d in devices]
        free = [d for d in devices if not d["busy"] and not d["low_memory"]]
        self.fields["device"].initial = (free or devices or [{"id": "cpu"}])[0]["id"]
        self.fields["collections"].choices = [
            (str(c["id"]), f"{c['name']} ({c['keyframes']})") for c in collections
        ]

    def options(self) -> dict:
        data = self.cleaned_data
        options = {
            "device": data["device"],
            "collection_ids": [int(c) for c in data.get("collections") or []],
        }
        for key in ("batch_size", "chunk_size"):
            if data.get(key):
                options[key] = data[key]
        return options


class InferenceView(RoleRequiredMixin, TemplateView):
    """GET: the page. POST ``action=start``: start (or continue) a run; ``action=join``
    with ``run``: add a worker on another device. Refusals re-render with the message."""

    min_role = Role.TRAINER
    template_name = "training/inference.html"

    def _job_id(self) -> int | None:
        raw = self.request.GET.get("job", "")
        if not raw:
            return None
        if not raw.isdigit():
            raise Http404("No such inference job.")
        return int(raw)

    @staticmethod
    def _collections() -> list[dict]:
        counts = keyframe_counts()
        return [
            {"id": pk, "name": name, "keyframes": counts.get(pk, 0)}
            for pk, name in Collection.objects.order_by("name").values_list("pk", "name")
            if counts.get(pk)
        ]

    def get_context_data(self, form: InferenceForm | None = None, **kwargs):
        ctx = super().get_context_data(**kwargs)
        devices = form.devices if form is not None else list_devices()
        for d in devices:
            d["free_text"] = gib(d["free_bytes"])
            d["total_text"] = gib(d["total_bytes"])
        collections = self._collections()
        form = form or InferenceForm(devices=devices, collections=collections)
        jobs = Job.objects.filter(kind=JOB_KIND).select_related("created_by")
        job_id = self._job_id()
        if job_id is not None:
            job = jobs.filter(pk=job_id).first()
            if job is None:
                raise Http404("No such inference job.")
        else:
            job = jobs.filter(status__in=Job.ACTIVE).order_by("created_at").first() or jobs.first()
        run = None
        if job is not None:
            run = (
                InferenceRun.objects.select_related("model_version")
                .filter(pk=(job.params or {}).get("run_id"))
                .first()
            )
        active = active_version()
        current = unfinished_run()
        ctx.update(
            form=form,
            devices=devices,
            collections=collections,
            total_keyframes=sum(c["keyframes"] for c in collections),
            active=active,
            problem=class_map_problem(active) if active else None,
            job=job,
            run=run,
            run_workers=list(active_jobs(run)) if run is not None else [],
            current=current,
            current_active=bool(current and active_jobs(current).exists()),
            published=published_run(),
            jobs=jobs[:10],
            **self._persons(),
        )
        return ctx

    @staticmethod
    def _persons() -> dict:
        """The "recognise persons" section: the active person model, its threshold, and
        the latest person inference job."""
        version = active_version(ModelVersion.Kind.PERSON)
        job = (
            Job.objects.filter(kind=person_inference.JOB_KIND)
            .select_related("created_by")
            .order_by("-created_at")
            .first()
        )
        return {
            "person_active": version,
            "person_threshold": (version.config or {}).get("threshold") if version else None,
            "person_job": job,
            "person_published": published_run(ModelVersion.Kind.PERSON),
            "person_faces": person_inference.archive_faces(version).count() if version else 0,
        }

    def post(self, request, *args, **kwargs):
        if request.POST.get("action") == "persons":
            try:
                job = person_inference.start_person_inference(request.user)
            except InferenceRefused as exc:
                messages.error(request, f"Person recognition was not started: {exc}")
                return self.render_to_response(self.get_context_data(), status=200)
            messages.success(
                request,
                f"Person recognition over the archive's faces started (job {job.pk}).",
            )
            return HttpResponseRedirect(reverse("training:inference") + "#persons")
        devices = list_devices()
        form = InferenceForm(request.POST, devices=devices, collections=self._collections())
        if form.is_valid():
            try:
                if request.POST.get("action") == "join":
                    run_id = request.POST.get("run", "")
                    if not run_id.isdigit():
                        raise InferenceRefused("No such inference run.")
                    job = add_worker(
                        request.user, int(run_id), form.cleaned_data["device"], _batch(form)
                    )
                    text = f"Another worker joined run {run_id} on {job.device} (job {job.pk})."
                else:
                    job = start_inference(request.user, form.options())
                    text = (
                        f"Inference started on {job.device} (job {job.pk}). You can leave "
                        "this page; the run goes on."
                    )
            except InferenceRefused as exc:
                messages.error(request, f"Inference was not started: {exc}")
            else:
                messages.success(request, text)
                return HttpResponseRedirect(f"{reverse('training:inference')}?job={job.pk}")
        else:
            messages.error(request, "Inference was not started: please correct the marked fields.")
        return self.render_to_response(self.get_context_data(form=form), status=200)


def _batch(form: InferenceForm) -> dict:
    size = form.cleaned_data.get("batch_size")
    return {"batch_size": size} if size else {}
