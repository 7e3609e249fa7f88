"""The persons page (one-click training, live run, per-person AP, rejection threshold)
and the JSON endpoint that turns feedback on person results into face labels.

Roles: the page is for trainers (training replaces the active person model); feedback
on retrieval results needs the annotator role, like every other label.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.views import View
from django.views.generic import TemplateView

from annotation.labels import MAX_BATCH
from annotation.models import Category, Source
from annotation.views.label_api import (
    BadPayload,
    JsonRoleMixin,
    error,
    read_grid_payload,
    save_batch,
)
from viva.models import Job
from viva.roles import Role, RoleRequiredMixin

from ..errors import TrainingRefused
from ..models import ModelVersion
from ..registry import active_version, baseline_for
from ..views.common import diff_class, pct, pct_number, pp
from . import dataset as ds
from .service import (
    JOB_KIND,
    embedder_warning,
    set_threshold,
    start_person_training,
    threshold_curve,
)


def _rate(value) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


class PersonsView(RoleRequiredMixin, TemplateView):
    """GET: eligible persons, the button, the current/last run (live), the active
    model's per-person AP and threshold. POST ``action=train``: start a run;
    ``action=threshold`` with ``threshold``: adjust the active model's threshold."""

    min_role = Role.TRAINER
    template_name = "training/persons.html"

    def _run(self) -> Job | None:
        jobs = Job.objects.filter(kind=JOB_KIND).select_related("created_by")
        raw = self.request.GET.get("job", "")
        if raw:
            if not raw.isdigit():
                raise Http404("No such person training run.")
            job = jobs.filter(pk=int(raw)).first()
            if job is None:
                raise Http404("No such person training run.")
            return job
        return jobs.filter(status__in=Job.ACTIVE).order_by("created_at").first() or jobs.first()

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        needed = ds.min_faces()
        statuses = ds.person_statuses(needed)
        eligible = [s for s in statuses if s.eligible]
        active = active_version(ModelVersion.Kind.PERSON)
        rows, chart = [], None
        baseline = None
        if active is not None:
            baseline = baseline_for(active)
            old = {e.category_name: e.ap for e in baseline.evaluations.all()} if baseline else {}
            for e in active.evaluations.all():
                prev = old.get(e.category_name)
                diff = e.ap - prev if e.ap is not None and prev is not None else None
                rows.append(
                    {
                        "name": e.category_name,
                        "ap": e.ap,
                        "ap_text": pct_number(e.ap),
                        "previous_text": pct_number(prev),
                        "diff_text": pp(diff),
                        "diff_class": diff_class(diff),
                        "faces": e.n_val_pos,
                    }
                )
            chart = {
                "names": [r["name"] for r in rows],
                "ap": [None if r["ap"] is None else round(100 * r["ap"], 1) for r in rows],
                "threshold": (active.config or {}).get("threshold"),
                "calibrated": (active.config or {}).get("calibrated_threshold"),
                "curve": threshold_curve(active),
            }
        metrics = active.metrics if active else {}
        run = self._run()
        ctx.update(
            tab="persons",
            needed=needed,
            statuses=statuses,
            eligible=len(eligible),
            can_train=len(eligible) >= 2,
            refusal=None if len(eligible) >= 2 else ds.not_enough_message(statuses, needed),
            max_faces=ds.max_faces(),
            warning=embedder_warning(),
            active=active,
            baseline=baseline,
            mean_text=pct(active.mean_ap) if active else "—",
            rows=rows,
            chart=chart,
            threshold=(active.config or {}).get("threshold") if active else None,
            calibrated=(active.config or {}).get("calibrated_threshold") if active else None,
            known_accept=_rate(metrics.get("known_accept")),
            unknown_reject=_rate(metrics.get("unknown_reject")),
            threshold_method=metrics.get("threshold_method", ""),
            run=run,
            runs=Job.objects.filter(kind=JOB_KIND).select_related("created_by")[:10],
        )
        return ctx

    def post(self, request, *args, **kwargs):
        action = request.POST.get("action", "train")
        if action == "threshold":
            return self._threshold(request)
        try:
            job = start_person_training(request.user)
        except TrainingRefused as exc:
            messages.error(request, f"Training was not started: {exc}")
            return self.render_to_response(self.get_context_data(), status=200)
        messages.success(
            request, f"Person training started (job {job.pk}). You can leave this page."
        )
        return HttpResponseRedirect(f"{reverse('training:persons')}?job={job.pk}")

    def _threshold(self, request):
        active = active_version(ModelVersion.Kind.PERSON)
        raw = (request.POST.get("threshold") or "").replace(",", ".")
        try:
            if active is None:
                raise TrainingRefused("There is no active person model to adjust.")
            try:
                value = float(raw)
            except ValueError:
                raise TrainingRefused("Enter the threshold as a number between 0 and 1.") from None
            set_threshold(active, value)
        except TrainingRefused as exc:
            messages.error(request, f"The threshold was not changed: {exc}")
            return self.render_to_response(self.get_context_data(), status=200)
        messages.success(
            request,
            f"The rejection threshold of {active} is now {value:.3f}. Run person inference "
            "again so the archive's results use it.",
        )
        return HttpResponseRedirect(reverse("training:persons"))


class PersonFeedbackView(JsonRoleMixin, View):
    """``training:person_feedback``: the grid's save protocol (see
    :mod:`annotation.views.label_api`) with *face* ids as keys. Retrieval pages of
    persons post here, so a correction labels the recognised face (source "feedback"),
    which the next person training reads."""

    min_role = Role.ANNOTATOR

    def post(self, request: HttpRequest):
        try:
            payload, labels = read_grid_payload(request, MAX_BATCH)
        except BadPayload as exc:
            return error(str(exc), 400)
        try:
            category_id = int(payload.get("category"))
        except (TypeError, ValueError):
            return error("No person given; select a person and retry.", 400)
        if not Category.objects.filter(pk=category_id, kind=Category.Kind.PERSON).exists():
            return error("This person no longer exists; the labels were not saved.", 409)
        return save_batch(
            labels,
            category_id,
            request.user,
            Source.FEEDBACK,
            faces=True,
            bad_key="No recognised face to label here.",
        )
