"""Sequence import page (issue 3, item 7): a CSV of video intervals → candidates / labels.

Small files are validated and imported inside the request and the page shows the summary;
files with more than :data:`~annotation.sequence_import.SYNC_ROW_LIMIT` rows are validated here
(so errors still come back at once, with line numbers) and imported by a ``sequence_import``
job. A file with any error imports nothing.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from django import forms
from django.conf import settings
from django.http import HttpRequest
from django.shortcuts import redirect
from django.utils.text import get_valid_filename
from django.views.generic import TemplateView

from viva.jobs import start_job
from viva.roles import Role, RoleRequiredMixin

from ..selection import CategoryRequiredMixin
from ..sequence_import import (
    EXAMPLE_CSV,
    MAX_BYTES,
    MAX_ROWS,
    SYNC_ROW_LIMIT,
    SequenceImportError,
    apply_plan,
    plan_import,
)
from .acquire import label_grid_url


class SequenceForm(forms.Form):
    file = forms.FileField(label="CSV file")

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > MAX_BYTES:
            raise forms.ValidationError(f"The file is larger than {MAX_BYTES // 2**20} MB.")
        return upload


class SequenceImportView(RoleRequiredMixin, CategoryRequiredMixin, TemplateView):
    """``annotation:sequence_import``."""

    min_role = Role.ANNOTATOR
    template_name = "annotation/sequence_import.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx.setdefault("form", SequenceForm())
        ctx.update(
            example=EXAMPLE_CSV,
            label_url=label_grid_url(),
            max_mb=MAX_BYTES // 2**20,
            max_rows=MAX_ROWS,
            sync_rows=SYNC_ROW_LIMIT,
        )
        return ctx

    def post(self, request: HttpRequest, *args, **kwargs):
        form = SequenceForm(request.POST, request.FILES)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form), status=400)
        upload = form.cleaned_data["file"]
        content = upload.read()
        try:
            plan = plan_import(content)
        except SequenceImportError as exc:
            ctx = self.get_context_data(form=form, errors=exc.errors, filename=upload.name)
            return self.render_to_response(ctx, status=400)
        if plan.n_rows > SYNC_ROW_LIMIT:
            folder = Path(settings.VAR_DIR) / "uploads" / "sequences"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{uuid.uuid4().hex}_{get_valid_filename(upload.name) or 'import.csv'}"
            path.write_bytes(content)
            job = start_job(
                "sequence_import",
                {"category_id": self.category.pk, "path": str(path), "filename": upload.name},
                user=request.user,
                title=f"Sequence import of {upload.name} into “{self.category.name}”",
            )
            return redirect("jobs:detail", pk=job.pk)
        summary = apply_plan(plan, self.category, user=request.user)
        ctx = self.get_context_data(
            summary=summary, warnings=summary.warnings, filename=upload.name
        )
        return self.render_to_response(ctx)
