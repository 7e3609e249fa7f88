"""Archive pages: overview, collections, videos with their shots and keyframes, import."""

from __future__ import annotations

import uuid
from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect
from django.utils.text import get_valid_filename
from django.views.generic import FormView, TemplateView

from ..ingest.importer import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from ..jobs import start_job
from ..models import Collection, Image, Job, Shot, Video
from ..roles import Role, RoleRequiredMixin


class HomeView(RoleRequiredMixin, TemplateView):
    min_role = Role.RESEARCHER
    template_name = "viva/home.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx["counts"] = {
            "collections": Collection.objects.count(),
            "videos": Video.objects.count(),
            "shots": Shot.objects.count(),
            "images": Image.objects.count(),
            "keyframes": Image.objects.filter(video__isnull=False).count(),
        }
        ctx["recent_jobs"] = Job.objects.select_related("created_by")[:5]
        ctx["recent_videos"] = Video.objects.order_by("-created_at")[:6]
        return ctx


class CollectionListView(RoleRequiredMixin, TemplateView):
    min_role = Role.RESEARCHER
    template_name = "viva/collections.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx["collections"] = Collection.objects.annotate(
            n_videos=Count("videos", distinct=True), n_images=Count("images", distinct=True)
        )
        return ctx


class CollectionDetailView(RoleRequiredMixin, TemplateView):
    min_role = Role.RESEARCHER
    template_name = "viva/collection_detail.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        collection = get_object_or_404(Collection, pk=kwargs["pk"])
        videos = collection.videos.annotate(n_shots=Count("shots")).order_by("title", "id")
        ctx["collection"] = collection
        ctx["videos"] = Paginator(videos, 50).get_page(self.request.GET.get("page"))
        stills = collection.images.filter(video__isnull=True).order_by("id")
        ctx["stills"] = Paginator(stills, 60).get_page(self.request.GET.get("spage"))
        return ctx


class VideoDetailView(RoleRequiredMixin, TemplateView):
    min_role = Role.RESEARCHER
    template_name = "viva/video_detail.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        video = get_object_or_404(Video.objects.select_related("collection"), pk=kwargs["pk"])
        shots = list(video.shots.all())
        by_shot: dict[int, list[Image]] = {}
        for image in video.keyframes.order_by("frame"):
            by_shot.setdefault(image.shot_id, []).append(image)
        for shot in shots:
            shot.frames = by_shot.get(shot.pk, [])
        ctx.update(video=video, shots=shots)
        return ctx


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        single = super().clean
        if isinstance(data, (list, tuple)):
            return [single(d, initial) for d in data]
        return [single(data, initial)]


class UploadForm(forms.Form):
    collection = forms.ModelChoiceField(
        Collection.objects.all(), required=False, empty_label="— new collection —"
    )
    new_collection = forms.CharField(max_length=200, required=False)
    files = MultipleFileField(help_text="Videos (mp4, mkv, avi, mov, webm …) or images.")

    def clean(self):
        data = super().clean()
        if not data.get("collection") and not (data.get("new_collection") or "").strip():
            raise forms.ValidationError("Choose a collection or name a new one.")
        limit = settings.VIVA_MAX_UPLOAD_MB * 2**20
        problems = []
        for f in data.get("files") or []:
            suffix = Path(f.name).suffix.lower()
            if suffix not in VIDEO_SUFFIXES | IMAGE_SUFFIXES:
                problems.append(f"{f.name}: not a supported video or image type.")
            elif f.size > limit:
                problems.append(f"{f.name}: larger than {settings.VIVA_MAX_UPLOAD_MB} MB.")
        if problems:
            raise forms.ValidationError(problems)
        return data


class UploadView(RoleRequiredMixin, FormView):
    """Upload videos and images; the import itself runs as a job."""

    min_role = Role.TRAINER
    template_name = "viva/upload.html"
    form_class = UploadForm

    def get_context_data(self, **kwargs):
        return super().get_context_data(max_mb=settings.VIVA_MAX_UPLOAD_MB, **kwargs)

    def form_valid(self, form):
        collection = form.cleaned_data["collection"]
        if collection is None:
            name = form.cleaned_data["new_collection"].strip()
            collection, _ = Collection.objects.get_or_create(name=name)
        batch = uuid.uuid4().hex
        groups: dict[str, list] = {"import_videos": [], "import_images": []}
        for upload in form.cleaned_data["files"]:
            kind = (
                "import_videos"
                if Path(upload.name).suffix.lower() in VIDEO_SUFFIXES
                else "import_images"
            )
            groups[kind].append(upload)
        jobs = []
        for kind, uploads in groups.items():
            if not uploads:
                continue
            # One folder per job: each job removes only its own files when it is done.
            folder = settings.VAR_DIR / "uploads" / f"{batch}-{kind}"
            folder.mkdir(parents=True)
            paths, names = [], {}
            for i, upload in enumerate(uploads):
                target = folder / f"{i:04d}_{get_valid_filename(upload.name)}"
                with open(target, "wb") as out:
                    for chunk in upload.chunks():
                        out.write(chunk)
                paths.append(str(target))
                names[str(target)] = upload.name
            what = "video(s)" if kind == "import_videos" else "image(s)"
            jobs.append(
                start_job(
                    kind,
                    {
                        "collection_id": collection.pk,
                        "paths": paths,
                        "names": names,
                        "cleanup_dirs": [str(folder)],
                    },
                    user=self.request.user,
                    title=f"Import {len(paths)} {what} into {collection}",
                )
            )
        messages.success(self.request, "Upload received; the import runs as a job below.")
        return redirect("jobs:detail", pk=jobs[0].pk)
