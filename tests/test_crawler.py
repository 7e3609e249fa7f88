"""Tests for annotation.crawler: web image search without the web.

Each source is pointed at a local fake server on 127.0.0.1 that serves a Bing
result fragment, a Google result page and MediaWiki JSON. The real engines are
never contacted. Runs with ``-p no:django`` and under pytest-django alike.
"""

from __future__ import annotations

import html
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from annotation import crawler, safe_fetch
from annotation.crawler import (
    BingSource,
    CrawlerError,
    CrawlOutcome,
    CrawlResult,
    GoogleSource,
    ImageSource,
    WikimediaCommonsSource,
    get_source,
    parse_bing_page,
    parse_google_page,
    parse_mediawiki_json,
    search,
)

LOCAL = frozenset({"127.0.0.1"})


# --------------------------------------------------------------------------
# Fake engine pages
# --------------------------------------------------------------------------


def bing_item(meta: dict[str, Any] | str, caption: str | None) -> str:
    """One result the way Bing's /images/async fragment writes it."""
    m = meta if isinstance(meta, str) else json.dumps(meta)
    info = (
        f'<div class="img_info hon"><span class="nowrap">{caption}</span></div>' if caption else ""
    )
    return (
        '<li><div class="iuscp isv"><div class="imgpt">'
        f'<a class="iusc" href="/images/search?view=detailV2" m="{html.escape(m)}">'
        '<div class="img_cont hoff"><img class="mimg" src="x.jpg"/></div></a>'
        f"{info}</div></div></li>"
    )


def bing_page(items: list[str]) -> bytes:
    return ('<ul class="dgControl_list">' + "".join(items) + "</ul>").encode()


BING_ITEMS = [
    bing_item(
        {
            "murl": "https://img.example.org/a.jpg",
            "turl": "https://tse1.mm.bing.net/th?id=OIP.a",
            "purl": "https://news.example.org/story",
            "t": "A \ue000cat\ue001 on a roof",
        },
        "1920 x 1080 · jpeg",
    ),
    # Not ending in .jpg: the original VIVA (icrawler's BingParser) lost these.
    bing_item(
        {"murl": "https://img.example.org/b.png", "turl": "https://tse1.mm.bing.net/th?id=b"},
        "800 x 600 · png",
    ),
    bing_item({"murl": "https://img.example.org/c?format=webp", "t": "C"}, "640 × 480 · webp"),
    bing_item({"murl": "https://img.example.org/tiny.jpg", "t": "tiny"}, "100 x 80 · jpeg"),
    bing_item({"murl": "https://img.example.org/a.jpg", "t": "duplicate"}, "1920 x 1080"),
    bing_item("{not json", "500 x 500"),
    bing_item({"murl": "javascript:alert(1)"}, "500 x 500"),
    bing_item({"turl": "https://tse1.mm.bing.net/th?id=nourl"}, "500 x 500"),
    bing_item({"murl": "https://img.example.org/unknown-size.jpg", "t": "D"}, None),
]
BING_MANY = [
    bing_item({"murl": f"https://img.example.org/many/{i}.jpg", "t": f"#{i}"}, "1024 x 768")
    for i in range(80)
]

GOOGLE_PAGE = b"""<!doctype html><html><head><title>cat - Google Search</title></head>
<body><div id="search"></div>
<script nonce="x">AF_initDataCallback({key: 'ds:1', hash: '2', data:[null,[[1,
["GRID_STATE0",null,[[1,["abc",["https://encrypted-tbn0.gstatic.com/images?q\\u003dtbn:abc.jpg",
181,279],["https://img.example.org/g1.jpg",1200,800],null,0]],
[1,["def",["https://encrypted-tbn0.gstatic.com/images?q\\u003dtbn:def.png",150,150],
["https://img.example.org/g2.png",640,480],null,0]]]]]]]});</script>
</body></html>"""
GOOGLE_CONSENT = b"""<!doctype html><html><body><form action="https://consent.google.com/save">
<script>var a = 1;</script><p>Before you continue to Google</p></form></body></html>"""


def commons_page(offset: int) -> bytes:
    pages = [
        {
            "pageid": 1,
            "title": "File:Second result.png",
            "index": 2,
            "imageinfo": [
                {
                    "url": "https://upload.wikimedia.org/b.png",
                    "thumburl": "https://upload.wikimedia.org/thumb/b.png/300px-b.png",
                    "descriptionurl": "https://commons.wikimedia.org/wiki/File:B.png",
                    "width": 1000,
                    "height": 700,
                    "mime": "image/png",
                }
            ],
        },
        {
            "pageid": 2,
            "title": "File:First result.jpg",
            "index": 1,
            "imageinfo": [
                {
                    "url": "https://upload.wikimedia.org/a.jpg",
                    "thumburl": "https://upload.wikimedia.org/thumb/a.jpg/300px-a.jpg",
                    "descriptionurl": "https://commons.wikimedia.org/wiki/File:A.jpg",
                    "width": 4000,
                    "height": 3000,
                    "mime": "image/jpeg",
                }
            ],
        },
        {
            "pageid": 3,
            "title": "File:Drawing.svg",
            "index": 3,
            "imageinfo": [
                {
                    "url": "https://upload.wikimedia.org/d.svg",
                    "width": 500,
                    "height": 500,
                    "mime": "image/svg+xml",
                }
            ],
        },
        {"pageid": 4, "title": "File:Missing info.jpg", "index": 4},
    ]
    data: dict[str, Any] = {"batchcomplete": True, "query": {"pages": pages}}
    if offset == 0:
        data["continue"] = {"gsroffset": 4, "continue": "gsroffset||"}
    else:
        data["query"]["pages"] = [
            {
                "pageid": 5,
                "title": "File:Small.jpg",
                "index": 5,
                "imageinfo": [
                    {
                        "url": "https://upload.wikimedia.org/small.jpg",
                        "width": 120,
                        "height": 90,
                        "mime": "image/jpeg",
                    }
                ],
            },
            {
                "pageid": 6,
                "title": "File:Third.jpg",
                "index": 6,
                "imageinfo": [
                    {
                        "url": "https://upload.wikimedia.org/c.jpg",
                        "width": 800,
                        "height": 600,
                        "mime": "image/jpeg",
                    }
                ],
            },
        ]
    return json.dumps(data).encode()


# --------------------------------------------------------------------------
# Local fake server
# --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    queries: list[tuple[str, dict[str, list[str]]]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that time out are expected."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Keep test output clean."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        self.server.queries.append((parts.path, query))
        status, content_type, body = self._answer(parts.path, query)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        first = int(query.get("first", ["0"])[0])
        count = int(query.get("count", ["35"])[0])
        term = query.get("q", [""])[0]
        if path == "/bing/images/async":
            items = {"many": BING_MANY, "nothing": []}.get(term, BING_ITEMS)
            return 200, "text/html; charset=utf-8", bing_page(items[first : first + count])
        if path == "/bing-flaky/images/async":
            if first > 0:
                return 500, "text/plain", b"oops"
            return 200, "text/html", bing_page(BING_MANY[:count])
        if path == "/bing-limited/images/async":
            return 429, "text/plain", b"slow down"
        if path == "/bing-slow/images/async":
            time.sleep(2)
            return 200, "text/html", b""
        if path == "/google/search":
            body = GOOGLE_PAGE if query.get("ijn", ["0"])[0] == "0" else b"<html></html>"
            return 200, "text/html", body
        if path == "/google-consent/search":
            return 200, "text/html", GOOGLE_CONSENT
        if path == "/w/api.php":
            return 200, "application/json", commons_page(int(query["gsroffset"][0]))
        if path == "/w-error/api.php":
            body = json.dumps({"error": {"code": "badvalue", "info": "Bad value"}}).encode()
            return 200, "application/json", body
        return 404, "text/plain", b"not found"


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.queries = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def base(server: _Server) -> str:
    server.queries.clear()
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(autouse=True)
def no_settings_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests pass their allow list explicitly, whatever the Django settings say."""
    monkeypatch.setattr(safe_fetch, "_django_settings", lambda: None)


# --------------------------------------------------------------------------
# Bing
# --------------------------------------------------------------------------


def test_parse_bing_page() -> None:
    results = parse_bing_page(bing_page(BING_ITEMS))
    assert [r.url for r in results] == [
        "https://img.example.org/a.jpg",
        "https://img.example.org/b.png",
        "https://img.example.org/c?format=webp",
        "https://img.example.org/tiny.jpg",
        "https://img.example.org/a.jpg",
        "https://img.example.org/unknown-size.jpg",
    ]
    first = results[0]
    assert first == CrawlResult(
        url="https://img.example.org/a.jpg",
        thumbnail_url="https://tse1.mm.bing.net/th?id=OIP.a",
        title="A cat on a roof",
        source="bing",
        width=1920,
        height=1080,
        page_url="https://news.example.org/story",
    )
    assert (results[2].width, results[2].height) == (640, 480)
    assert results[5].width is None and results[5].height is None


def test_parse_bing_page_garbage() -> None:
    assert parse_bing_page(b"\xff\xfe<html><body>nothing here") == []
    assert parse_bing_page(b"") == []


def test_bing_search(base: str, server: _Server) -> None:
    source = BingSource(f"{base}/bing/images/async", allow_private=LOCAL)
    results = source.search("cat", 50)
    assert [r.url for r in results] == [
        "https://img.example.org/a.jpg",
        "https://img.example.org/b.png",
        "https://img.example.org/c?format=webp",
        # tiny.jpg (100×80) is below the default 224×224; the duplicate is gone
        "https://img.example.org/unknown-size.jpg",
    ]
    assert all(r.source == "bing" for r in results)
    path, query = server.queries[0]
    assert query["q"] == ["cat"]
    assert query["first"] == ["0"]
    assert "+filterui:imagesize-custom_224_224" in query["qft"][0]


def test_bing_filters(base: str, server: _Server) -> None:
    source = BingSource(f"{base}/bing/images/async", allow_private=LOCAL)
    results = source.search(
        "cat", 50, filters={"min_size": (50, 50), "type": "face", "license": "publicdomain"}
    )
    assert "https://img.example.org/tiny.jpg" in [r.url for r in results]
    qft = server.queries[0][1]["qft"][0]
    assert "+filterui:face-face" in qft
    assert "+filterui:license-L1" in qft
    assert "+filterui:imagesize-custom_50_50" in qft


def test_no_results_is_explained(base: str) -> None:
    source = BingSource(f"{base}/bing/images/async", allow_private=LOCAL)
    outcome = search(source, "nothing", 50)
    assert outcome.results == []
    assert outcome.error_code == "no_results"
    assert outcome.error.startswith("Bing found no usable images for \u201cnothing\u201d")
    # Everything smaller than the minimum size counts as nothing, too.
    outcome = search(source, "cat", 50, filters={"min_size": (5000, 5000)})
    assert [r.url for r in outcome.results] == ["https://img.example.org/unknown-size.jpg"]


def test_bing_unsupported_filter(base: str) -> None:
    source = BingSource(f"{base}/bing/images/async", allow_private=LOCAL)
    with pytest.raises(CrawlerError) as exc:
        source.search("cat", 50, filters={"license": "all-rights-reserved"})
    assert exc.value.code == "filter"


def test_bing_paging_and_limit(base: str, server: _Server) -> None:
    source = BingSource(f"{base}/bing/images/async", allow_private=LOCAL)
    results = source.search("many", 50)
    assert len(results) == 50
    assert len({r.url for r in results}) == 50
    assert [q["first"][0] for _p, q in server.queries] == ["0", "35"]

    server.queries.clear()
    everything = source.search("many", 1000)
    assert len(everything) == len(BING_MANY)  # stops when the engine runs dry


def test_later_page_failure_keeps_results(base: str) -> None:
    source = BingSource(f"{base}/bing-flaky/images/async", allow_private=LOCAL)
    outcome = search(source, "cat", 100)
    assert outcome.ok
    assert len(outcome.results) == 35


# --------------------------------------------------------------------------
# Google
# --------------------------------------------------------------------------


def test_google_search(base: str) -> None:
    source = GoogleSource(f"{base}/google/search", allow_private=LOCAL)
    results = source.search("cat", 50, filters={"type": "photo"})
    urls = [r.url for r in results]
    assert "https://img.example.org/g1.jpg" in urls
    assert "https://img.example.org/g2.png" in urls
    assert not any("gstatic" in url for url in urls)  # Google's own thumbnails
    assert all(r.source == "google" for r in results)


def test_google_parse_failure_is_clear(base: str) -> None:
    source = GoogleSource(f"{base}/google-consent/search", allow_private=LOCAL)
    outcome = search(source, "cat", 50)
    assert outcome.results == []
    assert outcome.error_code == "parse"
    assert "Google" in outcome.error
    assert "try Bing" in outcome.error


def test_google_parser_crash_is_wrapped(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Any, response: Any) -> Any:
        raise IndexError("list index out of range")  # what position-based parsing does

    monkeypatch.setattr(crawler.GoogleParser, "parse", broken)
    source = GoogleSource(f"{base}/google/search", allow_private=LOCAL)
    outcome = search(source, "cat", 50)
    assert outcome.error_code == "parse"
    assert "could not be read" in outcome.error

    with pytest.raises(CrawlerError):
        parse_google_page(b"<html></html>", parser=lambda response: broken(None, response))


def test_google_unsupported_filter(base: str) -> None:
    source = GoogleSource(f"{base}/google/search", allow_private=LOCAL)
    outcome = search(source, "cat", 50, filters={"license": "publicdomain"})
    assert outcome.error_code == "filter"
    assert "Google does not support" in outcome.error


# --------------------------------------------------------------------------
# Wikimedia Commons
# --------------------------------------------------------------------------


def test_parse_mediawiki_json() -> None:
    results, next_offset = parse_mediawiki_json(commons_page(0))
    assert next_offset == 4
    assert [r.title for r in results] == ["First result.jpg", "Second result.png"]
    assert results[0] == CrawlResult(
        url="https://upload.wikimedia.org/a.jpg",
        thumbnail_url="https://upload.wikimedia.org/thumb/a.jpg/300px-a.jpg",
        title="First result.jpg",
        source="wikimedia",
        width=4000,
        height=3000,
        page_url="https://commons.wikimedia.org/wiki/File:A.jpg",
    )


def test_parse_mediawiki_json_errors() -> None:
    with pytest.raises(CrawlerError) as exc:
        parse_mediawiki_json(b"<html>maintenance</html>")
    assert exc.value.code == "parse"
    assert parse_mediawiki_json(b'{"batchcomplete": true}') == ([], None)


def test_commons_search(base: str, server: _Server) -> None:
    source = WikimediaCommonsSource(f"{base}/w/api.php", allow_private=LOCAL)
    results = source.search("cat", 50)
    assert [r.url for r in results] == [
        "https://upload.wikimedia.org/a.jpg",
        "https://upload.wikimedia.org/b.png",
        "https://upload.wikimedia.org/c.jpg",
    ]
    first_query = server.queries[0][1]
    assert first_query["generator"] == ["search"]
    assert first_query["gsrnamespace"] == ["6"]
    assert first_query["iiprop"] == ["url|size|mime"]
    assert first_query["iiurlwidth"] == ["300"]
    assert [q["gsroffset"][0] for _p, q in server.queries] == ["0", "4"]


def test_commons_api_error(base: str) -> None:
    source = WikimediaCommonsSource(f"{base}/w-error/api.php", allow_private=LOCAL)
    outcome = search(source, "cat", 50)
    assert outcome.error == "Wikimedia Commons reported an error: Bad value"


# --------------------------------------------------------------------------
# Failures never raise from search()
# --------------------------------------------------------------------------


@pytest.mark.parametrize("source_cls", [BingSource, GoogleSource, WikimediaCommonsSource])
def test_offline_unresolvable_host(source_cls: type) -> None:
    source = source_cls("http://nonexistent.invalid/search", timeout=3)
    outcome = search(source, "cat", 50)
    assert isinstance(outcome, CrawlOutcome)
    assert outcome.results == []
    assert outcome.error_code == "offline"
    assert "could not be reached" in outcome.error
    assert "offline" in outcome.error


def test_offline_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a machine without internet access sees for any host name."""

    def no_dns(*_args: Any, **_kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    outcome = search("bing", "cat", 50)  # the real, registered source
    assert outcome.error_code == "offline"
    assert outcome.error.startswith("The web search (Bing) could not be reached.")
    assert "offline" in outcome.error


def test_connection_refused() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = BingSource(f"http://127.0.0.1:{port}/images/async", allow_private=LOCAL)
    outcome = search(source, "cat", 50)
    assert outcome.error_code == "offline"
    assert "firewall" in outcome.error


def test_timeout(base: str) -> None:
    source = BingSource(f"{base}/bing-slow/images/async", allow_private=LOCAL, timeout=0.3)
    outcome = search(source, "cat", 50)
    assert outcome.error_code == "timeout"
    assert "did not answer in time" in outcome.error


def test_http_error(base: str) -> None:
    source = BingSource(f"{base}/bing-limited/images/async", allow_private=LOCAL)
    outcome = search(source, "cat", 50)
    assert outcome.error_code == "http"
    assert "HTTP 429" in outcome.error
    assert "too many" in outcome.error


def test_private_base_url_refused(base: str) -> None:
    """The page fetches follow the same address rules as everything else."""
    outcome = search(BingSource(f"{base}/bing/images/async"), "cat", 50)
    assert outcome.error_code == "blocked"
    assert "private network" in outcome.error


def test_unexpected_exception_becomes_message(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        name = "broken"
        label = "Broken"

        def search(
            self, term: str, limit: int, *, filters: dict[str, Any] | None = None
        ) -> list[CrawlResult]:
            raise RuntimeError("bug")

    outcome = search(Broken(), "cat", 50)
    assert outcome.error_code == "error"
    assert "failed unexpectedly" in outcome.error
    assert "image search on broken failed" in caplog.text


# --------------------------------------------------------------------------
# Registry and input handling
# --------------------------------------------------------------------------


def test_registry() -> None:
    assert list(crawler.SOURCES) == ["bing", "wikimedia", "google"]
    assert isinstance(get_source("bing"), BingSource)
    assert crawler.available_sources()[0] == ("bing", "Bing")
    for source in crawler.SOURCES.values():
        assert isinstance(source, ImageSource)
    assert get_source("bing").base_url == "https://www.bing.com/images/async"


def test_unknown_source() -> None:
    with pytest.raises(CrawlerError) as exc:
        get_source("altavista")
    assert exc.value.code == "unknown_source"
    outcome = search("altavista", "cat", 50)
    assert outcome.error_code == "unknown_source"
    assert "Bing" in outcome.error


def test_empty_term(base: str, server: _Server) -> None:
    source = BingSource(f"{base}/bing/images/async", allow_private=LOCAL)
    outcome = search(source, "   ", 50)
    assert outcome.error == "Please enter a search term."
    assert server.queries == []


def test_limit_is_clamped(base: str) -> None:
    source = BingSource(f"{base}/bing/images/async", allow_private=LOCAL)
    assert len(source.search("many", 5000)) == len(BING_MANY)
    assert len(source.search("many", 0)) == 1
    assert crawler.MIN_LIMIT == 50 and crawler.MAX_LIMIT == 1000
