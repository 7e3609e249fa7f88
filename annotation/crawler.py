"""Web image search for collecting training images.

Only result *URLs* are collected here; an image is downloaded (with
:func:`annotation.safe_fetch.fetch_image`) once an annotator labels it, as in
the original VIVA.

Every source implements the small :class:`ImageSource` protocol, so views and
jobs do not care which search engine answers. Search pages are fetched through
:func:`annotation.safe_fetch.fetch_bytes` (address checks, timeouts, byte
limit), and :func:`search` turns every failure into a :class:`CrawlOutcome`
with a message an archivist can act on ("this machine seems to be offline",
"Google changed its page", ...) instead of an exception.

What we take from icrawler and what we do not:

* the search URL parameters and filter syntax of its Bing and Google feeders
  (:meth:`icrawler.builtin.bing.BingFeeder.get_filter`, ...);
* Google's result page is read with icrawler's :class:`GoogleParser`, wrapped
  so that a changed page gives a clear :class:`CrawlerError`;
* Bing's page is parsed here: icrawler's BingParser only keeps URLs ending in
  ``.jpg`` (a defect of the original VIVA), while the ``m`` attribute it reads
  is JSON that also holds the thumbnail, title and source page.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlencode, urlsplit

from bs4 import BeautifulSoup
from icrawler.builtin.bing import BingFeeder
from icrawler.builtin.google import GoogleFeeder, GoogleParser

from .safe_fetch import FetchedBytes, FetchError, fetch_bytes

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_MIN_SIZE",
    "MAX_LIMIT",
    "MIN_LIMIT",
    "SOURCES",
    "BingSource",
    "CrawlOutcome",
    "CrawlResult",
    "CrawlerError",
    "GoogleSource",
    "ImageSource",
    "WikimediaCommonsSource",
    "available_sources",
    "get_source",
    "search",
]

logger = logging.getLogger(__name__)

#: Range offered to users (as in the original VIVA) and the default.
MIN_LIMIT = 50
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
#: Images smaller than this are useless for training (original VIVA: 224×224).
DEFAULT_MIN_SIZE = (224, 224)

#: Search pages are small; anything larger is not what we asked for.
MAX_PAGE_BYTES = 5 * 2**20
#: A browser-like agent: Bing and Google serve a different (script-only) page
#: to unknown clients.
BROWSER_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36"
)
#: Wikimedia asks API clients to identify themselves.
API_USER_AGENT = "VIVA video archive annotation (image search)"


# --------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CrawlResult:
    """One image found by a search engine (not downloaded).

    ``source`` is the name of the :class:`ImageSource` that found it;
    ``page_url`` the web page the image appears on, when known (useful to check
    the licence). ``width``/``height`` are what the engine claims, if anything.
    """

    url: str
    thumbnail_url: str | None
    title: str
    source: str
    width: int | None
    height: int | None
    page_url: str | None = None


class CrawlerError(Exception):
    """A search failed; ``message`` is meant for archivists.

    ``code`` is one of ``offline``, ``timeout``, ``http``, ``parse``,
    ``no_results``, ``blocked``, ``filter``, ``unknown_source``, ``invalid``,
    ``error``.
    """

    def __init__(self, message: str, *, code: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


@dataclass
class CrawlOutcome:
    """What :func:`search` returns: results, or a user-readable error."""

    results: list[CrawlResult] = field(default_factory=list)
    error: str | None = None
    error_code: str | None = None
    source: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class ImageSource(Protocol):
    """A web image search.

    ``filters`` keys understood by the built-in sources:

    * ``min_size``: ``(width, height)``, default :data:`DEFAULT_MIN_SIZE`;
      results that the engine says are smaller are dropped (results without a
      known size are kept; check again when downloading);
    * ``type``: ``"photo"``, ``"face"``, ``"clipart"``, ``"linedrawing"``;
    * ``license``: e.g. ``"commercial"``, ``"noncommercial"``,
      ``"commercial,modify"`` (Bing also ``"creativecommons"``,
      ``"publicdomain"``).

    A filter the engine cannot apply raises :class:`CrawlerError` (``filter``)
    rather than being silently ignored, except where the source documents it.
    """

    name: str
    label: str

    def search(
        self, term: str, limit: int, *, filters: dict[str, Any] | None = None
    ) -> list[CrawlResult]: ...


# --------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------


def _fetch_error_to_crawler_error(exc: FetchError, label: str, url: str) -> CrawlerError:
    """Explain a failed page fetch in terms of the search engine."""
    host = urlsplit(url).hostname or url
    if exc.code == "dns":
        return CrawlerError(
            f"The web search ({label}) could not be reached. This machine seems "
            f"to be offline or cannot look up internet names (DNS lookup of "
            f"{host} failed). Check the network connection, or ask an "
            "administrator to allow this server to reach the internet.",
            code="offline",
        )
    if exc.code in ("connect", "network"):
        return CrawlerError(
            f"The web search ({label}) could not be reached. This machine seems "
            f"to be offline, or a firewall blocks the connection to {host}.",
            code="offline",
        )
    if exc.code == "timeout":
        return CrawlerError(
            f"The web search ({label}) did not answer in time. Try again later.",
            code="timeout",
        )
    if exc.code == "http":
        if exc.status == 429:
            advice = (
                "It refused the search because too many were made. Wait a few "
                "minutes or use another source."
            )
        elif exc.status in (401, 403):
            advice = "It may block automated searches. Try another source."
        else:
            advice = "Try again later or use another source."
        return CrawlerError(
            f"{label} answered with an error (HTTP {exc.status}). {advice}",
            code="http",
        )
    if exc.code == "tls":
        return CrawlerError(
            f"The secure connection to {label} ({host}) failed because its "
            "certificate could not be verified. Check the server's date and "
            "certificates, or whether a proxy intercepts connections.",
            code="offline",
        )
    if exc.code in ("private", "scheme", "invalid_url"):
        return CrawlerError(
            f"The address configured for {label} cannot be used: {exc.message}",
            code="blocked",
        )
    if exc.code == "too_large":
        return CrawlerError(
            f"{label} sent an unexpectedly large answer; the search was stopped.",
            code="parse",
        )
    return CrawlerError(f"The search on {label} failed: {exc.message}", code="error")


def _is_web_url(value: object) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _int_or_none(value: object) -> int | None:
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _min_size(filters: Mapping[str, Any] | None) -> tuple[int, int]:
    value = (filters or {}).get("min_size", DEFAULT_MIN_SIZE)
    if value is None:
        return (0, 0)
    try:
        width, height = (int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise CrawlerError(
            "The minimum size must be given as width and height.", code="filter"
        ) from exc
    return max(width, 0), max(height, 0)


def _icrawler_filter_string(
    feeder_cls: type, options: Mapping[str, Any], label: str, sep: str = ""
) -> str:
    """Build the engine's filter string with icrawler's (pure) filter rules.

    ``get_filter`` does not touch the feeder's state, so an uninitialised
    instance is enough; this avoids starting icrawler's thread pools.
    """
    if not options:
        return ""
    feeder = feeder_cls.__new__(feeder_cls)
    try:
        return feeder.get_filter().apply(dict(options), sep=sep)
    except (KeyError, ValueError, TypeError, AssertionError) as exc:
        names = ", ".join(f"{k}={v}" for k, v in options.items())
        raise CrawlerError(
            f"{label} does not support this filter ({names}).", code="filter"
        ) from exc


class _HttpImageSource:
    """Paging, deduplication, size filtering and error mapping for sources.

    Subclasses implement :meth:`_page`, which fetches one result page and
    returns its results plus the offset of the next page (``None`` when the
    engine has no more).
    """

    name = ""
    label = ""
    default_base_url = ""
    user_agent = BROWSER_USER_AGENT

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float = 10.0,
        total_timeout: float = 120.0,
        max_page_bytes: int = MAX_PAGE_BYTES,
        allow_private: Iterable[str] | None = None,
    ) -> None:
        self.base_url = base_url or self.default_base_url
        self.timeout = timeout
        self.total_timeout = total_timeout
        self.max_page_bytes = max_page_bytes
        self.allow_private = None if allow_private is None else frozenset(allow_private)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # -- helpers for subclasses ------------------------------------------

    def _url(self, params: Mapping[str, Any]) -> str:
        joiner = "&" if "?" in self.base_url else "?"
        return self.base_url + joiner + urlencode(params)

    def _get(self, url: str, deadline: float) -> FetchedBytes:
        remaining = deadline - time.monotonic()
        try:
            return fetch_bytes(
                url,
                max_bytes=self.max_page_bytes,
                timeout=self.timeout,
                total_timeout=max(min(remaining, 3 * self.timeout), 0.1),
                allow_private=self.allow_private,
                headers={
                    "User-Agent": self.user_agent,
                    "Accept-Language": "en-US,en;q=0.8",
                },
            )
        except FetchError as exc:
            raise _fetch_error_to_crawler_error(exc, self.label, url) from exc

    def _page(
        self,
        term: str,
        offset: int,
        count: int,
        filters: Mapping[str, Any],
        deadline: float,
    ) -> tuple[list[CrawlResult], int | None]:
        raise NotImplementedError

    # -- ImageSource -------------------------------------------------------

    def search(
        self, term: str, limit: int, *, filters: dict[str, Any] | None = None
    ) -> list[CrawlResult]:
        """Collect up to ``limit`` result URLs for ``term``.

        Raises :class:`CrawlerError` if the first page fails or nothing usable
        was found (code ``no_results``). If a later page fails or the time
        budget runs out, the results so far are returned (and the problem is
        logged), because they are still useful.
        """
        term = term.strip()
        if not term:
            raise CrawlerError("Please enter a search term.", code="invalid")
        limit = max(1, min(int(limit), MAX_LIMIT))
        filters = dict(filters or {})
        min_width, min_height = _min_size(filters)
        deadline = time.monotonic() + self.total_timeout
        results: list[CrawlResult] = []
        seen: set[str] = set()
        offset: int | None = 0
        # Engines repeat themselves at the end; never loop forever.
        for _page_number in range(2 * (limit // 10) + 5):
            if offset is None or len(results) >= limit:
                break
            if time.monotonic() >= deadline:
                logger.warning("%s: time budget used up after %d results", self.name, len(results))
                break
            try:
                page, next_offset = self._page(
                    term, offset, limit - len(results), filters, deadline
                )
            except CrawlerError as exc:
                if not results:
                    raise
                logger.warning("%s: stopped after %d results: %s", self.name, len(results), exc)
                break
            fresh = 0  # results not seen on earlier pages
            for result in page:
                if result.url in seen:
                    continue
                seen.add(result.url)
                fresh += 1
                if (result.width is not None and result.width < min_width) or (
                    result.height is not None and result.height < min_height
                ):
                    continue
                results.append(result)
                if len(results) >= limit:
                    break
            # An empty page, or one that only repeats earlier results, means
            # the engine has nothing more.
            if fresh == 0 or next_offset is None or next_offset <= offset:
                break
            offset = next_offset
        if not results:
            # Say so instead of returning nothing: an engine that changed its
            # page looks exactly like one that found nothing.
            raise CrawlerError(self._no_results_message(term), code="no_results")
        return results[:limit]

    def _no_results_message(self, term: str) -> str:
        return (
            f"{self.label} found no usable images for \u201c{term}\u201d (images smaller "
            "than the minimum size are left out). Try other words or another "
            f"source. If {self.label} finds nothing for every search, it may have "
            "changed its pages and VIVA needs an update."
        )


# --------------------------------------------------------------------------
# Bing
# --------------------------------------------------------------------------

_SIZE_RE = re.compile(r"(\d+)\s*[x×]\s*(\d+)")
# Bing marks query words in titles with private-use characters.
_HIGHLIGHT_RE = re.compile("[\ue000-\uf8ff]")


def parse_bing_page(content: bytes | str, source: str = "bing") -> list[CrawlResult]:
    """Read Bing's image result HTML (the ``/images/async`` fragment).

    Each result is an ``a.iusc`` element whose ``m`` attribute is JSON with
    ``murl`` (image), ``turl`` (thumbnail), ``t`` (title) and ``purl`` (page);
    the size is shown in the ``.img_info`` caption ("1920 x 1080 · jpeg").
    Malformed entries are skipped; an unreadable page gives an empty list.
    """
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    soup = BeautifulSoup(text, "lxml")
    results: list[CrawlResult] = []
    for anchor in soup.find_all(attrs={"m": True}):
        try:
            meta = json.loads(anchor["m"])
        except (TypeError, ValueError):
            continue
        if not isinstance(meta, dict) or not _is_web_url(meta.get("murl")):
            continue
        width = height = None
        container = anchor.find_parent(class_="imgpt") or anchor.parent
        caption = container.select_one(".img_info .nowrap, .img_info span") if container else None
        if caption is not None:
            match = _SIZE_RE.search(caption.get_text(" ", strip=True))
            if match:
                width, height = int(match.group(1)), int(match.group(2))
        thumbnail = meta.get("turl")
        page_url = meta.get("purl")
        results.append(
            CrawlResult(
                url=meta["murl"],
                thumbnail_url=thumbnail if _is_web_url(thumbnail) else None,
                title=_HIGHLIGHT_RE.sub("", str(meta.get("t") or "")).strip(),
                source=source,
                width=width,
                height=height,
                page_url=page_url if _is_web_url(page_url) else None,
            )
        )
    return results


class BingSource(_HttpImageSource):
    """Bing image search (the HTML fragment its own result page loads).

    Filters are translated with icrawler's Bing filter rules; ``min_size`` also
    becomes Bing's custom size filter.
    """

    name = "bing"
    label = "Bing"
    default_base_url = "https://www.bing.com/images/async"
    page_size = 35

    def _filter_string(self, filters: Mapping[str, Any]) -> str:
        options: dict[str, Any] = {}
        kind = filters.get("type")
        if kind == "face":
            options["people"] = "face"
        elif kind:
            options["type"] = kind
        if filters.get("license"):
            options["license"] = filters["license"]
        min_width, min_height = _min_size(filters)
        if min_width or min_height:
            options["size"] = f">{min_width}x{min_height}"
        return _icrawler_filter_string(BingFeeder, options, self.label)

    def _page(
        self,
        term: str,
        offset: int,
        count: int,
        filters: Mapping[str, Any],
        deadline: float,
    ) -> tuple[list[CrawlResult], int | None]:
        params: dict[str, Any] = {
            "q": term,
            "first": offset,
            "count": self.page_size,
            "adlt": "moderate",
        }
        qft = self._filter_string(filters)
        if qft:
            params["qft"] = qft
        fetched = self._get(self._url(params), deadline)
        try:
            page = parse_bing_page(fetched.content, self.name)
        except Exception as exc:
            raise CrawlerError(
                "Bing's result page could not be read (Bing may have changed its page layout).",
                code="parse",
            ) from exc
        return page, (offset + len(page)) if page else None


# --------------------------------------------------------------------------
# Google
# --------------------------------------------------------------------------

_GOOGLE_HOST_RE = re.compile(r"(^|\.)(google|gstatic|googleusercontent|ggpht)\.", re.IGNORECASE)


class _Response:
    """The one attribute icrawler's parsers use from ``requests.Response``."""

    def __init__(self, content: bytes) -> None:
        self.content = content


def parse_google_page(
    content: bytes,
    source: str = "google",
    parser: Callable[[Any], Any] | None = None,
) -> list[CrawlResult]:
    """Extract image URLs from Google's result page with icrawler's parser.

    icrawler's :class:`GoogleParser` searches the page's scripts for URLs
    ending in an image extension; that depends on Google's page and breaks
    whenever it changes. Any failure, and a page without a single image URL,
    becomes a :class:`CrawlerError` that says so.
    """
    if parser is None:
        parser = GoogleParser.__new__(GoogleParser).parse  # no thread pool needed
    try:
        raw = parser(_Response(content))
        entries = list(raw or [])
    except Exception as exc:
        raise CrawlerError(
            "Google's result page could not be read. Google changes its page "
            "often; try Bing or Wikimedia Commons instead.",
            code="parse",
        ) from exc
    results: list[CrawlResult] = []
    for entry in entries:
        url = entry.get("file_url") if isinstance(entry, dict) else None
        if not _is_web_url(url) or _GOOGLE_HOST_RE.search(urlsplit(url).hostname or ""):
            continue
        results.append(CrawlResult(url, None, "", source, None, None))
    if not results:
        raise CrawlerError(
            "No images could be found in Google's answer. Google may have changed "
            "its page or asked for a confirmation (consent or captcha) that a "
            "program cannot give; try Bing or Wikimedia Commons instead.",
            code="parse",
        )
    return results


class GoogleSource(_HttpImageSource):
    """Google image search, parsed with icrawler (fragile, see above)."""

    name = "google"
    label = "Google"
    default_base_url = "https://www.google.com/search"
    page_size = 100

    def _page(
        self,
        term: str,
        offset: int,
        count: int,
        filters: Mapping[str, Any],
        deadline: float,
    ) -> tuple[list[CrawlResult], int | None]:
        options = {k: filters[k] for k in ("type", "license") if filters.get(k)}
        params = {
            "q": term,
            "tbm": "isch",
            "ijn": offset // self.page_size,
            "start": offset,
            "tbs": _icrawler_filter_string(GoogleFeeder, options, self.label, sep=","),
        }
        fetched = self._get(self._url(params), deadline)
        if offset > 0:
            try:
                page = parse_google_page(fetched.content, self.name)
            except CrawlerError:
                return [], None  # a later empty page just means "no more"
        else:
            page = parse_google_page(fetched.content, self.name)
        return page, offset + self.page_size


# --------------------------------------------------------------------------
# Wikimedia Commons
# --------------------------------------------------------------------------

_COMMONS_MIME = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


def parse_mediawiki_json(
    content: bytes, source: str = "wikimedia"
) -> tuple[list[CrawlResult], int | None]:
    """Read a MediaWiki ``generator=search`` + ``prop=imageinfo`` answer.

    Accepts ``formatversion`` 1 (pages as a dict) and 2 (a list); results are
    put back in search-rank order (``index``). Files that are not bitmaps
    (SVG, PDF, video) are skipped because they cannot be used as training
    images directly. Returns the results and the next ``gsroffset``.
    """
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise CrawlerError(
            "Wikimedia Commons sent an answer that could not be read.", code="parse"
        ) from exc
    if not isinstance(data, dict):
        raise CrawlerError("Wikimedia Commons sent an unexpected answer.", code="parse")
    if "error" in data:
        info = data["error"].get("info") if isinstance(data["error"], dict) else None
        raise CrawlerError(
            f"Wikimedia Commons reported an error: {info or 'unknown error'}",
            code="http",
        )
    pages: Any = (data.get("query") or {}).get("pages") or []
    if isinstance(pages, dict):
        pages = list(pages.values())
    ranked = sorted((p for p in pages if isinstance(p, dict)), key=lambda p: p.get("index", 0))
    results: list[CrawlResult] = []
    for page in ranked:
        infos = page.get("imageinfo") or []
        if not infos or not isinstance(infos[0], dict):
            continue
        info = infos[0]
        mime = str(info.get("mime") or "")
        if mime and mime not in _COMMONS_MIME:
            continue
        if not _is_web_url(info.get("url")):
            continue
        title = str(page.get("title") or "")
        title = title.split(":", 1)[1] if title.startswith("File:") else title
        thumb = info.get("thumburl")
        page_url = info.get("descriptionurl")
        results.append(
            CrawlResult(
                url=info["url"],
                thumbnail_url=thumb if _is_web_url(thumb) else None,
                title=title,
                source=source,
                width=_int_or_none(info.get("width")),
                height=_int_or_none(info.get("height")),
                page_url=page_url if _is_web_url(page_url) else None,
            )
        )
    next_offset = _int_or_none((data.get("continue") or {}).get("gsroffset"))
    return results, next_offset


class WikimediaCommonsSource(_HttpImageSource):
    """Wikimedia Commons via the public MediaWiki API (JSON, stable, free licences).

    ``type`` and ``license`` filters are ignored: Commons holds only freely
    licensed files and has no photo/face classification.
    """

    name = "wikimedia"
    label = "Wikimedia Commons"
    default_base_url = "https://commons.wikimedia.org/w/api.php"
    user_agent = API_USER_AGENT
    page_size = 50  # the API's limit for anonymous thumbnail requests

    def _page(
        self,
        term: str,
        offset: int,
        count: int,
        filters: Mapping[str, Any],
        deadline: float,
    ) -> tuple[list[CrawlResult], int | None]:
        params = {
            "action": "query",
            "format": "json",
            "formatversion": "2",
            "generator": "search",
            "gsrsearch": f"{term} filetype:bitmap",
            "gsrnamespace": "6",
            "gsrlimit": min(self.page_size, max(count, 1)),
            "gsroffset": offset,
            "prop": "imageinfo",
            "iiprop": "url|size|mime",
            "iiurlwidth": "300",
        }
        fetched = self._get(self._url(params), deadline)
        return parse_mediawiki_json(fetched.content, self.name)


# --------------------------------------------------------------------------
# Registry and entry point
# --------------------------------------------------------------------------

#: Built-in sources, most reliable first (the order a form should offer them).
SOURCES: dict[str, ImageSource] = {
    source.name: source for source in (BingSource(), WikimediaCommonsSource(), GoogleSource())
}


def available_sources() -> list[tuple[str, str]]:
    """``(name, label)`` pairs, e.g. for a form's ``choices``."""
    return [(name, source.label) for name, source in SOURCES.items()]


def get_source(name: str) -> ImageSource:
    """The registered source called ``name``; :class:`CrawlerError` if unknown."""
    try:
        return SOURCES[name]
    except KeyError:
        raise CrawlerError(
            f"Unknown image source {name!r}. Choose one of: "
            + ", ".join(label for _name, label in available_sources()),
            code="unknown_source",
        ) from None


def search(
    source: str | ImageSource,
    term: str,
    limit: int = DEFAULT_LIMIT,
    *,
    filters: dict[str, Any] | None = None,
) -> CrawlOutcome:
    """Search ``source`` (a name from :data:`SOURCES` or an instance).

    Never raises for network, engine or input problems: the outcome carries a
    message for the user instead, so a view or job can simply show it.
    """
    name = source if isinstance(source, str) else getattr(source, "name", "")
    try:
        engine = get_source(source) if isinstance(source, str) else source
        results = engine.search(term, limit, filters=filters)
    except CrawlerError as exc:
        return CrawlOutcome([], exc.message, exc.code, name)
    except FetchError as exc:  # a custom source that lets one through
        label = getattr(source, "label", name) or name
        err = _fetch_error_to_crawler_error(exc, label, "")
        return CrawlOutcome([], err.message, err.code, name)
    except Exception:
        logger.exception("image search on %s failed", name)
        return CrawlOutcome(
            [],
            "The web search failed unexpectedly. Try again later or use another "
            "source; if it keeps failing, tell an administrator.",
            "error",
            name,
        )
    return CrawlOutcome(results, None, None, name)
