"""Web search acquisition: search, preview through the server, download only what is labelled.

Flow (issue 3, item 5):

1. ``annotation:crawl`` (POST) searches one source of :mod:`annotation.crawler` for a term
   (default: the selected category's name) and keeps the result URLs for a few hours
   (:func:`annotation.acquisition.save_results`); the page then shows them in the grid.
2. Grid keys are *signed* result tokens, and thumbnails are served by ``annotation:preview``,
   which fetches them with :mod:`annotation.safe_fetch` (small byte limit, short timeouts),
   re-encodes them and caches them under ``var/``. The user's browser contacts no foreign
   host when the page loads, and the server fetches only addresses it handed out itself.
3. ``annotation:crawl_save`` receives the grid's labels and starts one ``download_web_images``
   job (queue ``io``) that downloads, verifies, stores (sha256 dedup), records the origin and
   saves the labels (source ``crawler``). Unlabelled results are never downloaded.
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any
from urllib.parse import urlencode, urlsplit

from django import forms
from django.contrib import messages
from django.core import signing
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.html import escape
from django.views import View
from django.views.generic import TemplateView

from viva.jobs import start_job
from viva.models import Job
from viva.roles import Role, RoleRequiredMixin

from .. import crawler, safe_fetch
from ..acquisition import (
    WebResult,
    fetch_preview,
    load_results,
    preview_token,
    read_preview_token,
    save_results,
    update_results,
)
from ..grid import GridSpec, grid_size, page_links
from ..labels import LabelError, parse_value
from ..models import Annotation, Category, ImageOrigin, Source
from ..selection import CategoryRequiredMixin
from .acquire import label_grid_url, list_grid_page, slice_page
from .label_api import BadPayload, JsonRoleMixin, error, read_grid_payload

#: A search runs inside the web request; the crawler stops paging after this many seconds
#: and keeps what it has, so a slow engine cannot hold a web worker for minutes.
SEARCH_BUDGET_SECONDS = 25.0
MAX_SAVE_BATCH = 1000
TYPE_CHOICES = [
    ("", "any"),
    ("photo", "photos"),
    ("face", "faces"),
    ("clipart", "clip art"),
    ("linedrawing", "line drawings"),
]


class CrawlForm(forms.Form):
    term = forms.CharField(label="Search term", max_length=300)
    source = forms.ChoiceField(label="Source")
    limit = forms.IntegerField(
        label="Max. results",
        min_value=crawler.MIN_LIMIT,
        max_value=crawler.MAX_LIMIT,
        initial=crawler.DEFAULT_LIMIT,
    )
    image_type = forms.ChoiceField(label="Type", choices=TYPE_CHOICES, required=False)
    min_size = forms.IntegerField(
        label="Min. size (px)",
        min_value=0,
        max_value=4000,
        initial=crawler.DEFAULT_MIN_SIZE[0],
        help_text="Smaller images are left out (when the engine reports sizes).",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Read at request time: sources may be added (or replaced in tests) at run time.
        self.fields["source"].choices = crawler.available_sources()

    def clean_term(self) -> str:
        term = " ".join(self.cleaned_data["term"].split())
        if not term:
            raise forms.ValidationError("Please enter a search term.")
        return term

    def filters(self) -> dict[str, Any]:
        size = self.cleaned_data.get("min_size") or 0
        filters: dict[str, Any] = {"min_size": (size, size)}
        if self.cleaned_data.get("image_type"):
            filters["type"] = self.cleaned_data["image_type"]
        return filters


def run_search(source_name: str, term: str, limit: int, filters: dict[str, Any]):
    """Search with a time budget suited to a web request (see :data:`SEARCH_BUDGET_SECONDS`)."""
    try:
        engine = crawler.get_source(source_name)
    except crawler.CrawlerError as exc:
        return crawler.CrawlOutcome([], exc.message, exc.code, source_name)
    if getattr(engine, "total_timeout", 0) > SEARCH_BUDGET_SECONDS:
        engine = copy.copy(engine)
        engine.total_timeout = SEARCH_BUDGET_SECONDS
    return crawler.search(engine, term, limit, filters=filters)


def _source_label(name: str) -> str:
    return dict(crawler.available_sources()).get(name, name)


def _preview_url(url: str, *, has_thumb: bool, size: str = "thumb") -> str:
    query = {"t": preview_token(url, has_thumb=has_thumb)}
    if size != "thumb":
        query["size"] = size
    return reverse("annotation:preview") + "?" + urlencode(query)


def _current_labels(
    category: Category, urls: list[str], pending: dict[str, list], jobs_active: set[int]
) -> dict[str, int | None]:
    """Labels of the page's results: stored ones, or what a still-running download will save.

    Two queries (origins of these URLs, their labels in this category), whatever the page size.
    """
    by_url: dict[str, int] = {}
    for url, image_id in ImageOrigin.objects.filter(
        source=Source.CRAWLER, url__in=urls
    ).values_list("url", "image_id"):
        by_url.setdefault(url, image_id)
    values = dict(
        Annotation.objects.filter(
            category=category, face__isnull=True, image_id__in=set(by_url.values())
        ).values_list("image_id", "value")
    )
    labels: dict[str, int | None] = {}
    for url in urls:
        wait = pending.get(url)
        if wait and wait[1] in jobs_active:
            labels[url] = wait[0]
        elif url in by_url:
            labels[url] = values.get(by_url[url])
        else:
            labels[url] = None
    return labels


class CrawlView(RoleRequiredMixin, CategoryRequiredMixin, TemplateView):
    """``annotation:crawl``: the search form and, for ``?search=<id>``, its results in the grid."""

    min_role = Role.ANNOTATOR
    template_name = "annotation/crawl.html"

    def get(self, request: HttpRequest, *args, **kwargs):
        search_id = request.GET.get("search", "")
        entry = load_results("crawl", search_id, user=request.user) if search_id else None
        if search_id and entry is None:
            messages.warning(
                request,
                "This search has expired (results are kept for a few hours). Please search again.",
            )
            return redirect("annotation:crawl")
        initial = {"term": self.category.name, "source": next(iter(crawler.SOURCES), "")}
        if entry:
            initial.update(
                term=entry["term"],
                source=entry["engine"],
                limit=entry["limit"],
                image_type=entry.get("image_type", ""),
                min_size=entry.get("min_size", crawler.DEFAULT_MIN_SIZE[0]),
            )
        ctx = self.get_context_data(form=CrawlForm(initial=initial))
        if entry:
            ctx.update(self.results_context(entry, search_id))
        return self.render_to_response(ctx)

    def post(self, request: HttpRequest, *args, **kwargs):
        form = CrawlForm(request.POST)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form), status=400)
        data = form.cleaned_data
        outcome = run_search(data["source"], data["term"], data["limit"], form.filters())
        if not outcome.ok:
            ctx = self.get_context_data(
                form=form,
                search_error=outcome.error,
                search_error_code=outcome.error_code,
                offline=outcome.error_code == "offline",
            )
            return self.render_to_response(ctx)
        results = [
            {
                "u": r.url,
                "t": r.thumbnail_url,
                "n": r.title,
                "p": r.page_url,
                "w": r.width,
                "h": r.height,
            }
            for r in outcome.results
        ]
        search_id = save_results(
            "crawl",
            {
                "term": data["term"],
                "engine": data["source"],
                "limit": data["limit"],
                "image_type": data.get("image_type") or "",
                "min_size": data.get("min_size") or 0,
                "results": results,
                "pending": {},
                "jobs": [],
            },
            user=request.user,
        )
        return redirect(reverse("annotation:crawl") + "?" + urlencode({"search": search_id}))

    def results_context(self, entry: dict[str, Any], search_id: str) -> dict[str, Any]:
        request = self.request
        rows, cols = grid_size(request.user)
        per_page = rows * cols
        results = entry["results"]
        page_rows, number, _first = slice_page(request, results, per_page)
        job_ids = [int(j) for j in entry.get("jobs", [])]
        jobs = list(Job.objects.filter(pk__in=job_ids).order_by("-created_at")[:10])
        active = {j.pk for j in jobs if j.is_active}
        labels = _current_labels(
            self.category, [r["u"] for r in page_rows], entry.get("pending", {}), active
        )
        term, engine = entry["term"], entry["engine"]
        items = []
        for r in page_rows:
            result = WebResult(r["u"], r["t"], term, engine, r.get("n") or "", r.get("p"))
            host = urlsplit(r["u"]).hostname or ""
            size = f"{r['w']}×{r['h']}" if r.get("w") and r.get("h") else ""
            item = {
                "key": result.token(),
                "thumb": _preview_url(r["t"] or r["u"], has_thumb=bool(r["t"])),
                "full": _preview_url(r["u"], has_thumb=True, size="large"),
                "caption": (r.get("n") or host)[:120],
                "label": labels.get(r["u"]),
                "extra": " · ".join(x for x in (size, host.removeprefix("www.")) if x),
            }
            if r.get("p"):
                item["link"] = r["p"]
            items.append(item)
        grid_page = list_grid_page(items, number=number, per_page=per_page, total=len(results))
        save_url = reverse("annotation:crawl_save") + "?" + urlencode({"search": search_id})
        grid = GridSpec(
            items=items,
            save_url=save_url,
            category_id=self.category.pk,
            source=Source.CRAWLER,
            page=page_links(request, grid_page),
            rows=rows,
            cols=cols,
            prefs_url=reverse("annotation:grid_prefs"),
            readonly=False,
            empty_message="The search found nothing.",
        ).as_dict()
        return {
            "search_id": search_id,
            "search": entry,
            "source_label": _source_label(engine),
            "grid": grid,
            "jobs": jobs,
            "label_url": label_grid_url(),
        }


def _quick_refusal(url: str) -> str | None:
    """Refuse obviously unsafe result addresses at once (the job checks everything again).

    Only checks that need no network: the scheme and literal IP addresses. Host names are
    resolved and checked by :mod:`annotation.safe_fetch` when the job downloads.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "This address is not valid."
    if parts.scheme not in ("http", "https"):
        return "Only http:// and https:// addresses can be downloaded."
    host = (parts.hostname or "").strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if host in safe_fetch.default_allow_hosts():
        return None
    if safe_fetch.is_forbidden_address(address):
        return "This address points to a private network and cannot be fetched."
    return None


class CrawlSaveView(JsonRoleMixin, View):
    """``annotation:crawl_save``: the grid's labels → one ``download_web_images`` job.

    Answers the grid's protocol (``saved``, ``rejected``) plus ``job`` (id, status and page
    URLs) so the page can show the download's progress.
    """

    min_role = Role.ANNOTATOR

    def post(self, request: HttpRequest):
        try:
            payload, labels = read_grid_payload(request, MAX_SAVE_BATCH)
        except BadPayload as exc:
            return error(str(exc), 400)
        try:
            category = Category.objects.get(pk=int(payload.get("category")))
        except (TypeError, ValueError):
            return error("No category given; select a category and retry.", 400)
        except Category.DoesNotExist:
            return error("This category no longer exists; the labels were not saved.", 409)
        rejected: list[dict[str, str]] = []
        items: dict[str, dict[str, Any]] = {}
        for entry in labels:
            key = str(entry["key"])
            try:
                result = WebResult.from_token(key)
            except signing.BadSignature:
                rejected.append(
                    {
                        "key": key,
                        "error": (
                            "This search result is not valid (altered or expired); search again."
                        ),
                    }
                )
                continue
            try:
                value = parse_value(entry.get("value"))
            except LabelError as exc:
                rejected.append({"key": key, "error": str(exc)})
                continue
            problem = _quick_refusal(result.url)
            if problem:
                rejected.append({"key": key, "error": problem})
                continue
            items[result.url] = {**result.as_params(), "value": value, "key": key}
        response: dict[str, Any] = {
            "saved": len(items),
            "rejected": rejected,
            "labels": {i["key"]: i["value"] for i in items.values()},
        }
        if not items:
            return JsonResponse(response)
        to_label = sum(1 for i in items.values() if i["value"] is not None)
        job = start_job(
            "download_web_images",
            {
                "category_id": category.pk,
                "items": [{k: v for k, v in i.items() if k != "key"} for i in items.values()],
            },
            user=request.user,
            title=f"Download {to_label} web image(s) for “{category.name}”"
            if to_label
            else f"Update web image labels for “{category.name}”",
        )
        self._remember(request, job, items)
        response["job"] = {
            "id": job.pk,
            "title": job.title,
            "status_url": reverse("jobs:status", args=[job.pk]),
            "detail_url": reverse("jobs:detail", args=[job.pk]),
        }
        response["message"] = (
            f"{len(items)} label(s) accepted; the labelled images are downloaded in the "
            f"background (job #{job.pk})."
        )
        return JsonResponse(response)

    @staticmethod
    def _remember(request: HttpRequest, job: Job, items: dict[str, dict[str, Any]]) -> None:
        """Note the pending labels in the search, so a reload shows them while downloading."""
        search_id = request.GET.get("search", "")
        entry = load_results("crawl", search_id, user=request.user) if search_id else None
        if entry is None:
            return
        pending = entry.setdefault("pending", {})
        for url, item in items.items():
            pending[url] = [item["value"], job.pk]
        entry["jobs"] = [job.pk, *entry.get("jobs", [])][:20]
        update_results("crawl", search_id, entry, user=request.user)


_PLACEHOLDER = """<svg xmlns="http://www.w3.org/2000/svg" width="320" height="200" \
viewBox="0 0 320 200"><rect width="320" height="200" fill="#e9edf2"/>\
<text x="160" y="92" font-family="sans-serif" font-size="15" text-anchor="middle" \
fill="#5f6b7a">No preview</text><text x="160" y="118" font-family="sans-serif" \
font-size="11" text-anchor="middle" fill="#5f6b7a">{message}</text></svg>"""


def _placeholder(message: str, status: int) -> HttpResponse:
    """An image that says why there is no preview (an ``<img>`` cannot show JSON)."""
    short = message if len(message) <= 60 else message[:57] + "…"
    response = HttpResponse(
        _PLACEHOLDER.format(message=escape(short)), content_type="image/svg+xml", status=status
    )
    response["X-Preview-Error"] = message.encode("ascii", "replace").decode()[:300]
    response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    response["Cache-Control"] = "private, max-age=60"
    return response


class PreviewView(RoleRequiredMixin, View):
    """``annotation:preview``: a search result's thumbnail, fetched and re-encoded by the server."""

    min_role = Role.ANNOTATOR

    def get(self, request: HttpRequest):
        try:
            url, has_thumb = read_preview_token(request.GET.get("t", ""))
        except signing.BadSignature:
            return _placeholder("invalid or expired preview address", 400)
        size = "large" if request.GET.get("size") == "large" else "thumb"
        try:
            jpeg = fetch_preview(url, size=size, has_thumb=has_thumb)
        except safe_fetch.FetchError as exc:
            return _placeholder(exc.message, 502)
        response = HttpResponse(jpeg, content_type="image/jpeg")
        response["Cache-Control"] = "private, max-age=3600"
        response["Content-Security-Policy"] = "default-src 'none'"
        response["X-Content-Type-Options"] = "nosniff"
        return response
