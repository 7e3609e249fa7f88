"""Jobs pages: the list with live progress, one job with log, charts and controls."""

from __future__ import annotations

from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.views import View
from django.views.generic import TemplateView

from ..jobs import cancel_job, reap_stale_jobs, resume_job, start_job
from ..models import Job
from ..roles import Role, RoleRequiredMixin, role_of


def job_state(job: Job) -> dict:
    """The JSON the pages poll; also what the API returns."""
    return {
        "id": job.pk,
        "kind": job.kind,
        "title": job.title,
        "status": job.status,
        "status_label": job.get_status_display(),
        "progress": job.progress,
        "total": job.total,
        "percent": job.percent,
        "eta_seconds": job.eta_seconds,
        "note": job.progress_note,
        "device": job.device,
        "error": job.error,
        "created_by": job.created_by.username if job.created_by_id else None,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "active": job.is_active,
    }


def may_control(user, job: Job) -> bool:
    """Trainers control every job; others only their own."""
    return role_of(user) >= Role.TRAINER or (job.created_by_id == user.pk)


class JobListView(RoleRequiredMixin, TemplateView):
    min_role = Role.RESEARCHER
    template_name = "viva/jobs.html"

    def get_context_data(self, **kwargs):
        reap_stale_jobs()
        ctx = super().get_context_data(**kwargs)
        ctx["jobs"] = Job.objects.select_related("created_by")[:100]
        return ctx


class JobStatusListView(RoleRequiredMixin, View):
    min_role = Role.RESEARCHER

    def get(self, request):
        reap_stale_jobs()
        ids = [int(i) for i in request.GET.get("ids", "").split(",") if i.isdigit()][:200]
        jobs = Job.objects.filter(pk__in=ids).select_related("created_by")
        return JsonResponse({"jobs": [job_state(j) for j in jobs]})


class JobDetailView(RoleRequiredMixin, TemplateView):
    min_role = Role.RESEARCHER
    template_name = "viva/job_detail.html"

    def get_context_data(self, **kwargs):
        reap_stale_jobs()
        ctx = super().get_context_data(**kwargs)
        job = get_object_or_404(Job.objects.select_related("created_by"), pk=kwargs["pk"])
        ctx.update(job=job, can_control=may_control(self.request.user, job))
        return ctx


class JobStatusView(RoleRequiredMixin, View):
    min_role = Role.RESEARCHER

    def get(self, request, pk: int):
        reap_stale_jobs()
        job = get_object_or_404(Job.objects.select_related("created_by"), pk=pk)
        state = job_state(job)
        state.update(log=job.log_tail, metrics=job.metrics, result=job.result)
        return JsonResponse(state)


class JobActionView(RoleRequiredMixin, View):
    """POST cancel / resume. Annotators may control their own jobs, trainers all."""

    min_role = Role.ANNOTATOR
    action = ""

    def post(self, request, pk: int):
        job = get_object_or_404(Job, pk=pk)
        if not may_control(request.user, job):
            return JsonResponse({"error": "You may only control your own jobs."}, status=403)
        job = cancel_job(job) if self.action == "cancel" else resume_job(job)
        if request.headers.get("accept", "").startswith("application/json"):
            return JsonResponse(job_state(job))
        return redirect("jobs:detail", pk=job.pk)


class WorkerCheckView(RoleRequiredMixin, View):
    """Start a short job that proves a worker is running (useful right after set-up)."""

    min_role = Role.TRAINER

    def post(self, request):
        job = start_job(
            "worker_check", {"steps": 20, "delay": 0.25}, user=request.user, title="Worker check"
        )
        return redirect("jobs:detail", pk=job.pk)
