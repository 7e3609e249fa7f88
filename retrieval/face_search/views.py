"""``retrieval:faces`` — person similarity search (issue 7, item 5), and its helpers.

Roles: searching is for researchers (like every search page); rebuilding the index is a
trainer's action (it is a long job that changes what everyone's searches use).

Query sources: an upload or a URL (annotation's form and safe fetch), ``?image=ID`` (any
archive image), ``?face=ID`` (a stored face), ``?query=TOKEN&face_no=N`` (a face of an
analysed picture, see :mod:`.query`). Several faces → the picture with numbered boxes and
the crops to choose from; none → a clear message and "search the whole image instead"
(``retrieval:similar``: a link for archive images and URLs, the kept copy of an upload
posted again by ``static/retrieval/faces.js``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import NoReverseMatch, reverse
from django.views import View
from django.views.generic import TemplateView

from annotation.acquisition import DOWNLOAD_MAX_BYTES
from annotation.views.query import ImageInputForm
from viva.media import media_url
from viva.models import Face, Image
from viva.roles import Role, RoleRequiredMixin, has_role

from . import query as face_query
from .index import FaceIndexError
from .service import (
    SYNC_LIMIT,
    FaceSearchError,
    index_status,
    similar_faces,
    start_rebuild,
)

RESULTS = 500  # faces ranked per query (then paged)
PER_PAGE = 48


class FaceQueryForm(ImageInputForm):
    """One picture: an uploaded file or a URL."""

    urls = forms.CharField(
        label="…or an image URL",
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "https://…/photo.jpg", "type": "url"}),
    )

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        count = len(data.get("files") or []) + len(data.get("urls") or [])
        if count == 0:
            raise forms.ValidationError("Choose an image file or paste an image URL.")
        if count > 1:
            raise forms.ValidationError("Search with one picture at a time.")
        return data


def _similar_url() -> str:
    try:
        return reverse("retrieval:similar")
    except NoReverseMatch:  # the image similarity page is not installed
        return ""


def _time_text(ms: int | None) -> str:
    if ms is None:
        return ""
    seconds = ms // 1000
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def result_items(pairs: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """What a result tile shows: the face crop, similarity, keyframe, video and time."""
    faces = Face.objects.select_related("image", "image__video").in_bulk([i for i, _ in pairs])
    items = []
    for face_id, sim in pairs:
        face = faces.get(face_id)
        if face is None:
            continue
        image = face.image
        video = image.video
        item = {
            "face_id": face.pk,
            "similarity": sim,
            "crop": media_url(face.thumbnail) if face.thumbnail else "",
            "keyframe": media_url(image.thumbnail or image.file),
            "image_id": image.pk,
            "image_name": str(image),
            "box": face.box,
            "search_url": reverse("retrieval:faces") + f"?face={face.pk}",
        }
        if video is not None:
            item.update(
                video_title=video.title,
                video_url=reverse("archive:video", kwargs={"pk": video.pk}),
                time=_time_text(image.time_ms),
                play_url=media_url(video.file) + f"#t={(image.time_ms or 0) / 1000:g}",
            )
        items.append(item)
    return items


class FaceSearchView(RoleRequiredMixin, TemplateView):
    """``retrieval:faces``: query by face; results as face crops with keyframe and video."""

    min_role = Role.RESEARCHER
    template_name = "retrieval/faces.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx.setdefault("form", FaceQueryForm())
        status = index_status()
        job = status.get("job")
        ctx.update(
            status=status,
            job=job,
            job_active=bool(job and job.is_active),
            can_rebuild=has_role(self.request.user, Role.TRAINER),
            similar_url=_similar_url(),
            max_mb=DOWNLOAD_MAX_BYTES // 2**20,
            sync_limit=SYNC_LIMIT,
        )
        return ctx

    # --- GET: a stored face, an archive image, an analysed picture, or the form -------
    def get(self, request: HttpRequest, *args, **kwargs):
        params = request.GET
        if params.get("face"):
            return self.search_face(params["face"])
        if params.get("image"):
            return self.search_image(params["image"])
        if params.get("query"):
            query = face_query.load(params["query"], request.user)
            if query is None:
                return self.problem("This query has expired; please search again.", status=410)
            return self.show_query(query, params.get("face_no", ""))
        return self.render_to_response(self.get_context_data())

    def problem(self, message: str, *, status: int = 400, **extra) -> HttpResponse:
        return self.render_to_response(
            self.get_context_data(problems=[message], **extra), status=status
        )

    def search_face(self, raw: str) -> HttpResponse:
        face = (
            Face.objects.select_related("image", "image__video").filter(pk=int(raw)).first()
            if raw.isdigit()
            else None
        )
        if face is None:
            return self.problem("This face no longer exists.", status=404)
        vector = face.vector()
        if vector is None:
            return self.problem(
                "This face has no embedding yet; it can be searched once the face pipeline "
                "has embedded it."
            )
        query_ctx = {
            "crop": media_url(face.thumbnail) if face.thumbnail else "",
            "name": str(face.image),
            "image_id": face.image_id,
        }
        return self.results(vector, query_ctx, exclude=(face.pk,), embedder=face.embedder)

    def search_image(self, raw: str) -> HttpResponse:
        image = Image.objects.filter(pk=int(raw)).first() if raw.isdigit() else None
        if image is None:
            return self.problem("This image no longer exists.", status=404)
        try:
            query = face_query.from_image(image)
        except face_query.FaceQueryError as exc:
            return self.problem(str(exc), whole_image={"image": image.pk})
        usable = query.usable
        if len(usable) == 1 and usable[0].face_id:
            return redirect(reverse("retrieval:faces") + f"?face={usable[0].face_id}")
        face_query.save(query, self.request.user)
        return self.show_query(query, "")

    def show_query(self, query: face_query.FaceQuery, face_no: str) -> HttpResponse:
        usable = query.usable
        chosen = query.face(int(face_no)) if face_no.isdigit() else None
        if chosen is None and len(usable) == 1:
            chosen = usable[0]
        if chosen is not None and chosen.face_id:
            return redirect(reverse("retrieval:faces") + f"?face={chosen.face_id}")
        if chosen is not None and chosen.ok:
            query_ctx = {
                "crop": self.query_image_url(query, chosen.number),
                "name": query.name,
                "image_id": query.image_id,
                "back_url": self.query_url(query) if len(usable) > 1 else "",
            }
            return self.results(chosen.vector(), query_ctx)
        ctx = self.get_context_data(choose=self.choice_context(query), problems=[])
        status = 200
        if not usable:
            ctx["problems"] = [query.message or "No face was found in this image."]
            ctx["whole_image"] = self.whole_image(query)
            status = 422 if query.source != "image" else 200
        return self.render_to_response(ctx, status=status)

    def query_url(self, query: face_query.FaceQuery, **extra) -> str:
        return reverse("retrieval:faces") + "?" + urlencode({"query": query.token, **extra})

    def query_image_url(self, query: face_query.FaceQuery, number: int | None = None) -> str:
        if query.source == "image" and number is None:
            image = Image.objects.filter(pk=query.image_id).first()
            return media_url(image.file) if image else ""
        face = query.face(number) if number else None
        if face is not None and face.face_id:
            stored = Face.objects.filter(pk=face.face_id).values_list("thumbnail", flat=True)
            return media_url(stored.first() or "")
        url = reverse("retrieval:face_query_image", kwargs={"token": query.token})
        return url + (f"?face_no={number}" if number else "")

    def choice_context(self, query: face_query.FaceQuery) -> dict[str, Any]:
        faces = [
            {
                "number": f.number,
                "ok": f.ok,
                "reason": f.reason,
                "score": f.score,
                "box": f.box_percent(query.width, query.height),
                "crop": self.query_image_url(query, f.number) if (f.crop or f.face_id) else "",
                "url": self.query_url(query, face_no=f.number) if f.ok else "",
            }
            for f in query.faces
        ]
        return {
            "name": query.name,
            "picture": self.query_image_url(query),
            "faces": faces,
            "message": query.message,
            "usable": len(query.usable),
        }

    def whole_image(self, query: face_query.FaceQuery) -> dict[str, Any]:
        """How "search the whole image instead" reaches ``retrieval:similar``."""
        if query.source == "image":
            return {"image": query.image_id}
        if query.url:
            return {"url": query.url}
        return {
            "upload": reverse("retrieval:face_query_image", kwargs={"token": query.token}),
            "name": query.name,
        }

    def results(
        self, vector, query_ctx: dict[str, Any], exclude=(), embedder: str | None = None
    ) -> HttpResponse:
        """``embedder``: a stored face's own; ``None`` (an analysed picture): the current."""
        try:
            pairs = similar_faces(vector, RESULTS, exclude_face_ids=exclude, embedder=embedder)
        except (FaceSearchError, FaceIndexError) as exc:
            return self.problem(str(exc), status=503)
        page = Paginator(pairs, PER_PAGE).get_page(self.request.GET.get("page"))
        items = result_items(list(page.object_list))
        params = self.request.GET.copy()
        params.pop("page", None)
        ctx = self.get_context_data(
            query_face=query_ctx,
            results=items,
            page_obj=page,
            n_results=len(pairs),
            page_query=params.urlencode(),
        )
        return self.render_to_response(ctx)

    # --- POST: an upload or a URL ----------------------------------------------------
    def post(self, request: HttpRequest, *args, **kwargs):
        form = FaceQueryForm(request.POST, request.FILES)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form), status=400)
        images, problems = form.load_images()
        if problems or not images:
            ctx = self.get_context_data(form=form, problems=problems or ["No image was read."])
            return self.render_to_response(ctx, status=400)
        incoming = images[0]
        source = "url" if incoming.url else "upload"
        try:
            query = face_query.from_incoming(incoming, source)
        except face_query.FaceQueryError as exc:
            return self.problem(str(exc), form=form)
        face_query.save(query, request.user)
        return redirect(self.query_url(query))


class FaceQueryImageView(RoleRequiredMixin, View):
    """The kept copy of a query picture (or one face crop of it), for its owner only."""

    min_role = Role.RESEARCHER

    def get(self, request: HttpRequest, token: str):
        query = face_query.load(token, request.user)
        if query is None:
            raise Http404("This query has expired.")
        number = request.GET.get("face_no", "")
        if number:
            face = query.face(int(number)) if number.isdigit() else None
            if face is None or face.crop is None:
                raise Http404("No such face.")
            content = face.crop
        elif query.picture is not None:
            content = query.picture
        else:
            raise Http404("This query has no kept picture.")
        response = HttpResponse(content, content_type="image/jpeg")
        response["Cache-Control"] = "private, max-age=3600"
        response["Content-Disposition"] = 'inline; filename="query.jpg"'
        return response


class FaceIndexView(RoleRequiredMixin, View):
    """``retrieval:faces_index`` (POST): rebuild the face index as a job."""

    min_role = Role.TRAINER

    def post(self, request: HttpRequest):
        job = start_rebuild(request.user)
        if "application/json" in request.headers.get("Accept", ""):
            return JsonResponse(
                {"job": job.pk, "status_url": reverse("jobs:status", kwargs={"pk": job.pk})}
            )
        return redirect(reverse("retrieval:faces") + "#index")
