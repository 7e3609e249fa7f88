"""Web search acquisition through the app's HTTP endpoints, without the internet.

A fake search engine and image host run on 127.0.0.1 (allowed by ``VIVA_FETCH_ALLOW_HOSTS``
in the test settings); the crawler's Bing source is pointed at it. The download job runs
in-process with ``viva.jobs.run_job``. The fake server counts requests per path, which is how
the tests see that only labelled images are downloaded and that previews are cached.
"""

from __future__ import annotations

import html
import io
import json
import re
import socket
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.urls import reverse
from PIL import Image as PILImage

from annotation import crawler
from annotation.models import Annotation, AnnotationEvent, Candidate, Category, ImageOrigin
from viva.jobs import run_job
from viva.models import Collection, Image, Job

# --------------------------------------------------------------------------
# Test data
# --------------------------------------------------------------------------


def png(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A distinct PNG per seed (different colours → different sha256)."""
    image = PILImage.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    for x in range(0, size[0], 16):
        image.putpixel((x, (x + seed) % size[1]), (255, 255, 255))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A tiny, valid 1-bit PNG that declares ``width × height`` pixels."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------
# The fake web: search engine + image host on 127.0.0.1
# --------------------------------------------------------------------------

Route = Callable[[BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes]]


@dataclass
class FakeWeb:
    """Routes by path; every request is counted in ``hits``."""

    routes: dict[str, Route] = field(default_factory=dict)
    hits: Counter = field(default_factory=Counter)
    base: str = ""
    bing_items: list[dict[str, Any]] = field(default_factory=list)

    def static(self, path: str, body: bytes, content_type: str = "image/png") -> str:
        self.routes[path] = lambda _h: (200, {"Content-Type": content_type}, body)
        return self.base + path

    def redirect(self, path: str, location: str) -> str:
        self.routes[path] = lambda _h: (302, {"Location": location}, b"")
        return self.base + path

    def url(self, path: str) -> str:
        return self.base + path


def bing_fragment(items: list[dict[str, Any]]) -> bytes:
    """Results the way Bing's ``/images/async`` fragment writes them (see test_crawler)."""
    parts = []
    for meta in items:
        parts.append(
            '<li><div class="iuscp isv"><div class="imgpt">'
            f'<a class="iusc" href="/images/search" m="{html.escape(json.dumps(meta))}">'
            '<img class="mimg" src="x.jpg"/></a>'
            '<div class="img_info hon"><span class="nowrap">320 x 240 · png</span></div>'
            "</div></div></li>"
        )
    return ('<ul class="dgControl_list">' + "".join(parts) + "</ul>").encode()


class _Handler(BaseHTTPRequestHandler):
    web: FakeWeb

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.web.hits[path] += 1
        route = self.web.routes.get(path)
        if route is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status, headers, body = route(self)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass


@pytest.fixture
def fake_web(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWeb]:
    """A local engine with 10 image results, wired in as the crawler's Bing source."""
    web = FakeWeb()
    handler = type("Handler", (_Handler,), {"web": web})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    web.base = f"http://127.0.0.1:{server.server_address[1]}"
    for i in range(10):
        web.static(f"/img/{i}.png", png(i))
        web.static(f"/thumb/{i}.png", png(100 + i, (160, 120)))
        web.bing_items.append(
            {
                "murl": web.url(f"/img/{i}.png"),
                "turl": web.url(f"/thumb/{i}.png"),
                "t": f"result {i}",
            }
        )
    web.routes["/bing"] = lambda _h: (
        200,
        {"Content-Type": "text/html"},
        bing_fragment(web.bing_items),
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setitem(crawler.SOURCES, "bing", crawler.BingSource(base_url=web.url("/bing")))
    yield web
    server.shutdown()
    server.server_close()


@pytest.fixture
def isolated(settings, tmp_path):
    """Media, caches and temporary files of this test under tmp_path."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.VAR_DIR = tmp_path / "var"
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "tmp")
    return tmp_path


@pytest.fixture
def category(db) -> Category:
    return Category.objects.create(name="Brandenburg Gate", kind=Category.Kind.CONCEPT)


@pytest.fixture
def annotator(client_for, category):
    """An annotator's client with ``category`` selected (through the selection endpoint)."""
    client = client_for("annotator")
    response = client.post(reverse("annotation:category_select"), {"category": category.pk})
    assert response.status_code == 302
    return client


GRID_JSON = re.compile(r'<script id="vgrid-data" type="application/json">(.*?)</script>', re.S)


def grid_of(response) -> dict[str, Any]:
    match = GRID_JSON.search(response.content.decode())
    assert match, "the page has no grid"
    return json.loads(match.group(1))


def search(client, term: str = "brandenburg gate", **extra) -> Any:
    data = {"term": term, "source": "bing", "limit": 50, "image_type": "", "min_size": 0, **extra}
    response = client.post(reverse("annotation:crawl"), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    return client.get(response["Location"])


def save(client, grid: dict[str, Any], labels: list[tuple[str, int | None]]) -> Any:
    body = {
        "category": grid["category_id"],
        "source": grid["source"],
        "labels": [{"key": k, "value": v} for k, v in labels],
    }
    return client.post(grid["save_url"], json.dumps(body), content_type="application/json")


def run_download(response) -> Job:
    data = response.json()
    job = Job.objects.get(pk=data["job"]["id"])
    assert job.kind == "download_web_images" and job.queue == "io"
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    return job


# --------------------------------------------------------------------------
# Searching and previews
# --------------------------------------------------------------------------


def test_search_form_defaults_to_the_category_name(annotator, category, isolated):
    page = annotator.get(reverse("annotation:crawl"))
    assert page.status_code == 200
    text = page.content.decode()
    assert f'value="{category.name}"' in text
    for _name, label in crawler.available_sources():
        assert label in text


def test_results_are_shown_as_previews_through_the_proxy(annotator, fake_web, isolated):
    page = search(annotator)
    assert page.status_code == 200
    grid = grid_of(page)
    items = grid["items"]
    assert len(items) == 10 and grid["source"] == "crawler"
    preview = reverse("annotation:preview")
    for item in items:
        # The browser gets only our own addresses: it never contacts the image hosts.
        assert item["thumb"].startswith(preview) and item["full"].startswith(preview)
        assert "127.0.0.1" not in item["thumb"] + item["full"] + item["key"]
        assert item["label"] is None
    assert fake_web.hits["/bing"] >= 1
    assert not any(path.startswith("/img/") for path in fake_web.hits)  # nothing downloaded

    first = annotator.get(items[0]["thumb"])
    assert first.status_code == 200 and first["Content-Type"] == "image/jpeg"
    assert PILImage.open(io.BytesIO(first.content)).format == "JPEG"  # re-encoded
    assert fake_web.hits["/thumb/0.png"] == 1
    again = annotator.get(items[0]["thumb"])
    assert again.status_code == 200 and again.content == first.content
    assert fake_web.hits["/thumb/0.png"] == 1  # served from the cache under var/
    assert Image.objects.count() == 0  # previews are not archive images


def test_paging_keeps_the_results(annotator, fake_web, isolated, users):
    from annotation.grid import save_grid_size

    save_grid_size(users["annotator"], 2, 3)  # six per page
    page = search(annotator)
    grid = grid_of(page)
    assert len(grid["items"]) == 6 and grid["page"]["total"] == 10
    assert grid["page"]["num_pages"] == 2 and grid["page"]["next_url"]
    hits = fake_web.hits["/bing"]
    second = grid_of(annotator.get(grid["page"]["next_url"]))
    assert len(second["items"]) == 4
    assert fake_web.hits["/bing"] == hits  # the engine is not asked again


def test_a_forged_preview_address_is_refused(annotator, fake_web, isolated):
    response = annotator.get(reverse("annotation:preview") + "?t=" + "x" * 40)
    assert response.status_code == 400
    assert "invalid" in response["X-Preview-Error"]
    assert sum(fake_web.hits.values()) == 0


def test_preview_of_a_private_thumbnail_is_refused(annotator, fake_web, isolated):
    fake_web.bing_items[0]["turl"] = "http://169.254.169.254/latest/meta-data/thumb.png"
    grid = grid_of(search(annotator))
    response = annotator.get(grid["items"][0]["thumb"])
    assert response.status_code == 502
    assert response["Content-Type"] == "image/svg+xml"  # a placeholder the <img> can show
    assert "private network" in response["X-Preview-Error"]


def test_preview_of_a_huge_thumbnail_is_refused(annotator, fake_web, isolated):
    fake_web.routes["/thumb/1.png"] = lambda _h: (
        200,
        {"Content-Type": "image/png", "Content-Length": str(50 * 2**20)},
        b"",
    )
    grid = grid_of(search(annotator))
    response = annotator.get(grid["items"][1]["thumb"])
    assert response.status_code == 502 and "larger than 2 MB" in response["X-Preview-Error"]


# --------------------------------------------------------------------------
# Labelling downloads exactly the labelled images
# --------------------------------------------------------------------------


def test_labelling_three_of_ten_downloads_only_those(
    annotator, fake_web, isolated, users, category
):
    grid = grid_of(search(annotator, term="gate at night"))
    keys = [item["key"] for item in grid["items"]]
    response = save(annotator, grid, [(keys[0], 1), (keys[1], -1), (keys[2], 0)])
    assert response.status_code == 200
    data = response.json()
    assert data["saved"] == 3 and data["rejected"] == []
    assert data["job"]["status_url"] == reverse("jobs:status", args=[data["job"]["id"]])
    assert Image.objects.count() == 0  # downloads happen in the job, not in the request

    job = run_download(response)
    assert job.result["stored"] == 3 and job.result["errors"] == []
    downloaded = sorted(p for p in fake_web.hits if p.startswith("/img/"))
    assert downloaded == ["/img/0.png", "/img/1.png", "/img/2.png"]

    web = Collection.objects.get(kind=Collection.Kind.WEB)
    assert web.images.count() == 3 and Image.objects.count() == 3
    origins = ImageOrigin.objects.order_by("url")
    assert [o.url for o in origins] == [fake_web.url(f"/img/{i}.png") for i in range(3)]
    for origin in origins:
        assert origin.source == "crawler" and origin.search_term == "gate at night"
        assert origin.engine == "bing" and origin.category == category
        assert origin.user == users["annotator"]
    by_url = {o.url: o.image_id for o in origins}
    labels = dict(Annotation.objects.values_list("image_id", "value"))
    assert labels == {
        by_url[fake_web.url("/img/0.png")]: 1,
        by_url[fake_web.url("/img/1.png")]: -1,
        by_url[fake_web.url("/img/2.png")]: 0,
    }
    assert set(AnnotationEvent.objects.values_list("source", flat=True)) == {"crawler"}
    assert Candidate.objects.filter(category=category).count() == 3

    # The results page now shows the stored labels.
    again = grid_of(
        annotator.get(
            reverse("annotation:crawl") + "?" + grid["page"]["current_url"].split("?", 1)[1]
        )
    )
    assert [i["label"] for i in again["items"][:4]] == [1, -1, 0, None]


def test_the_download_job_is_idempotent(annotator, fake_web, isolated):
    grid = grid_of(search(annotator))
    labels = [(grid["items"][0]["key"], 1), (grid["items"][1]["key"], 1)]
    run_download(save(annotator, grid, labels))
    hits = sum(fake_web.hits.values())
    counts = (Image.objects.count(), ImageOrigin.objects.count(), AnnotationEvent.objects.count())
    # The same labels again (a second job, like a redelivered one): nothing new happens.
    job = run_download(save(annotator, grid, labels))
    assert job.result["reused"] and not job.result["downloaded"]
    assert sum(fake_web.hits.values()) == hits
    assert (
        Image.objects.count(),
        ImageOrigin.objects.count(),
        AnnotationEvent.objects.count(),
    ) == counts


def test_changing_and_removing_a_label_of_a_downloaded_result(annotator, fake_web, isolated):
    grid = grid_of(search(annotator))
    key = grid["items"][0]["key"]
    run_download(save(annotator, grid, [(key, 1)]))
    run_download(save(annotator, grid, [(key, -1)]))
    assert list(Annotation.objects.values_list("value", flat=True)) == [-1]
    job = run_download(save(annotator, grid, [(key, None)]))
    assert job.result["removed"] and Annotation.objects.count() == 0
    assert Image.objects.count() == 1  # the image stays; only the label went
    assert fake_web.hits["/img/0.png"] == 1


def test_the_same_image_under_two_urls_is_one_image_with_two_origins(annotator, fake_web, isolated):
    fake_web.static("/mirror/copy-of-0.png", png(0))
    fake_web.bing_items.append({"murl": fake_web.url("/mirror/copy-of-0.png"), "t": "mirror"})
    grid = grid_of(search(annotator))
    by_title = {i["caption"]: i["key"] for i in grid["items"]}
    job = run_download(save(annotator, grid, [(by_title["result 0"], 1), (by_title["mirror"], 1)]))
    assert job.result["stored"] == 2
    assert Image.objects.count() == 1
    image = Image.objects.get()
    assert sorted(o.url for o in image.origins.all()) == sorted(
        [fake_web.url("/img/0.png"), fake_web.url("/mirror/copy-of-0.png")]
    )
    assert Annotation.objects.get().value == 1


# --------------------------------------------------------------------------
# SSRF and bad images through the app's endpoints: refused, clear message, nothing stored
# --------------------------------------------------------------------------


def assert_nothing_stored() -> None:
    assert Image.objects.count() == 0
    assert ImageOrigin.objects.count() == 0
    assert Annotation.objects.count() == 0
    assert Candidate.objects.count() == 0


def test_file_urls_from_an_engine_never_become_results(annotator, fake_web, isolated):
    fake_web.bing_items.insert(0, {"murl": "file:///etc/passwd", "t": "local file"})
    grid = grid_of(search(annotator))
    assert "local file" not in [i["caption"] for i in grid["items"]]
    assert len(grid["items"]) == 10


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("metadata", "private network"),
        ("redirect_private", "private network"),
        ("oversized", "larger than"),
        ("not_image", "not an image"),
        ("bomb", "too large"),
        ("tiny", "too small"),
    ],
)
def test_unsafe_or_bad_results_are_refused(annotator, fake_web, isolated, setup, expected):
    if setup == "metadata":
        url = "http://169.254.169.254/latest/meta-data/iam/credentials.png"
    elif setup == "redirect_private":
        url = fake_web.redirect("/go/elsewhere.png", "http://10.1.2.3/internal.png")
    elif setup == "oversized":
        fake_web.routes["/img/huge.png"] = lambda _h: (
            200,
            {"Content-Type": "image/png", "Content-Length": str(300 * 2**20)},
            b"",
        )
        url = fake_web.url("/img/huge.png")
    elif setup == "not_image":
        url = fake_web.static("/img/page.png", b"<html>hello</html>", "image/png")
    elif setup == "bomb":
        url = fake_web.static("/img/bomb.png", png_bomb(20_000, 20_000))
    else:
        url = fake_web.static("/img/tiny.png", png(5, (16, 16)))
    fake_web.bing_items[:] = [{"murl": url, "t": "bad"}]
    grid = grid_of(search(annotator))
    response = save(annotator, grid, [(grid["items"][0]["key"], 1)])
    assert response.status_code == 200
    data = response.json()
    if data["rejected"]:  # refused at once (literal private address)
        assert expected in data["rejected"][0]["error"]
        assert "job" not in data
    else:  # refused by the download job, with the reason per URL
        job = run_download(response)
        assert len(job.result["errors"]) == 1
        assert expected in job.result["errors"][0]["error"]
        assert job.result["errors"][0]["url"] == url
    assert_nothing_stored()
    assert "10.1.2.3" not in str(fake_web.hits)


def test_loopback_is_refused_when_not_allowed(annotator, fake_web, isolated, settings):
    grid = grid_of(search(annotator))
    settings.VIVA_FETCH_ALLOW_HOSTS = []
    response = save(annotator, grid, [(grid["items"][0]["key"], 1)])
    assert response.json()["rejected"][0]["error"].startswith("This address points to a private")
    preview = annotator.get(grid["items"][0]["thumb"])
    assert preview.status_code == 502 and "private network" in preview["X-Preview-Error"]
    assert_nothing_stored()


def test_keys_not_made_by_the_server_are_rejected(annotator, category, isolated):
    body = {
        "category": category.pk,
        "source": "crawler",
        "labels": [{"key": "http://169.254.169.254/latest/meta-data/", "value": 1}],
    }
    response = annotator.post(
        reverse("annotation:crawl_save"), json.dumps(body), content_type="application/json"
    )
    assert response.status_code == 200
    assert "not valid" in response.json()["rejected"][0]["error"]
    assert Job.objects.count() == 0
    assert_nothing_stored()


def test_save_for_a_deleted_category_is_refused(annotator, fake_web, isolated, category):
    grid = grid_of(search(annotator))
    category.delete()
    response = save(annotator, grid, [(grid["items"][0]["key"], 1)])
    assert response.status_code == 409 and "no longer exists" in response.json()["error"]
    assert Job.objects.count() == 0


def test_bad_labels_are_rejected_per_item(annotator, fake_web, isolated):
    grid = grid_of(search(annotator))
    response = save(annotator, grid, [(grid["items"][0]["key"], 7), (grid["items"][1]["key"], 1)])
    data = response.json()
    assert data["saved"] == 1 and "Unknown label" in data["rejected"][0]["error"]


# --------------------------------------------------------------------------
# Offline, roles
# --------------------------------------------------------------------------


def test_offline_says_so_clearly(annotator, isolated, monkeypatch):
    """The real Bing source with no DNS (as on an archive's offline network)."""

    def no_dns(*_args: Any, **_kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr("annotation.safe_fetch.socket.getaddrinfo", no_dns)
    response = annotator.post(
        reverse("annotation:crawl"),
        {
            "term": "cat",
            "source": "bing",
            "limit": 50,
            "image_type": "",
            "min_size": 224,
        },
    )
    assert response.status_code == 200
    text = response.content.decode()
    assert "No internet connection." in text
    assert "seems to be offline" in text
    assert "Traceback" not in text and 'id="vgrid"' not in text


def test_an_engine_that_answers_garbage_gives_a_message(annotator, fake_web, isolated):
    fake_web.routes["/bing"] = lambda _h: (500, {"Content-Type": "text/plain"}, b"oops")
    response = annotator.post(
        reverse("annotation:crawl"),
        {
            "term": "cat",
            "source": "bing",
            "limit": 50,
            "image_type": "",
            "min_size": 0,
        },
    )
    assert response.status_code == 200
    assert "HTTP 500" in response.content.decode()


def test_expired_search_goes_back_to_the_form(annotator, isolated):
    response = annotator.get(reverse("annotation:crawl") + "?search=0123456789abcdef")
    assert response.status_code == 302 and response["Location"] == reverse("annotation:crawl")


def test_another_users_search_is_not_shown(
    annotator, fake_web, isolated, client_for, category, users
):
    page = search(annotator)
    url = page.wsgi_request.get_full_path()
    other = client_for("trainer")
    other.post(reverse("annotation:category_select"), {"category": category.pk})
    assert other.get(url).status_code == 302


def test_researchers_may_not_crawl(client_for, category, isolated):
    client = client_for("researcher")
    client.post(reverse("annotation:category_select"), {"category": category.pk})
    assert client.get(reverse("annotation:crawl")).status_code == 403
    assert (
        client.post(
            reverse("annotation:crawl_save"), "{}", content_type="application/json"
        ).status_code
        == 403
    )
    assert client.get(reverse("annotation:preview")).status_code == 403


def test_the_crawl_page_needs_a_selected_category(client_for, db, isolated):
    response = client_for("annotator").get(reverse("annotation:crawl"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("annotation:categories"))


# --------------------------------------------------------------------------
# In a real browser: search, label with the keyboard, save, watch the download
# --------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_crawl_page_in_a_browser(
    page, live_server, users, fake_web, settings, tmp_path, monkeypatch
):
    from tests.fixtures_browser import login, screenshot

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.VAR_DIR = tmp_path / "var"
    # No worker here: the test runs the job itself (and nothing is left in the broker).
    monkeypatch.setattr("viva.jobs.runner._enqueue", lambda job: None)
    category = Category.objects.create(name="Gate")
    login(page, live_server, users["annotator"])
    page.goto(live_server.url + reverse("annotation:categories"))
    page.click("text=Select >> nth=0")
    page.goto(live_server.url + reverse("annotation:crawl"))
    assert page.input_value("input[name=term]") == "Gate"
    page.fill("input[name=min_size]", "0")
    page.click("form.crawl-form button[type=submit]")
    page.wait_for_selector(".vgrid-cells img")
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.vgrid-cells img'))"
        ".every((img) => img.complete && img.naturalWidth > 0)"
    )
    # Keyboard only: positive, negative, neutral on the first three results, then save.
    page.keyboard.press("1")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("2")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("3")
    page.click(".vgrid-save")
    row = page.wait_for_selector(".download-job")
    job = Job.objects.get(kind="download_web_images")
    assert len(job.params["items"]) == 3
    assert run_job(job.pk) == "succeeded"
    page.wait_for_selector('.download-job[data-active="0"]')
    assert "3 image(s) downloaded" in row.inner_text()
    screenshot(page, "acquire_crawl_downloaded", full_page=True)
    assert Annotation.objects.filter(category=category).count() == 3
    # Only our own server was contacted by the browser; the labels survive a reload.
    assert not [e for e in page.viva_errors if "127.0.0.1" in e and "/preview/" not in e]
    page.reload()
    page.wait_for_selector(".vgrid-cells img")
    labelled = page.eval_on_selector_all(
        ".vgrid-cells .vcell", "cells => cells.slice(0, 4).map((c) => c.dataset.label)"
    )
    assert labelled == ["pos", "neg", "neu", "none"]
