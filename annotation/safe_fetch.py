"""Safe fetching of user- or search-engine-supplied URLs.

Every URL that reaches the server from outside (crawler results, "query by URL",
the preview proxy) goes through this module, so the rules of DESIGN.md section 8
are enforced in one place:

* only ``http`` and ``https``;
* the host is resolved once with :func:`socket.getaddrinfo`; if *any* resolved
  address is private, loopback, link-local, multicast, reserved or unspecified the
  URL is refused (IPv4, IPv6 and IPv4 embedded in IPv6 alike);
* the connection goes to the address that was checked (the host name is only used
  for the ``Host`` header and for TLS SNI / certificate checks), so a DNS answer
  that changes between the check and the connection ("DNS rebinding") cannot
  redirect us to an internal service;
* redirects are followed by hand (at most five) and every hop is checked again
  before any connection is made;
* connect and read timeouts plus an overall deadline; the body is streamed with a
  byte limit (``Content-Length`` is checked up front and the bytes are counted);
* images are verified with Pillow, with a pixel limit enforced on the header,
  before anything is decoded (decompression bombs);
* TLS certificates are always verified.

The original VIVA downloaded with ``urlretrieve`` (which accepts ``file://``, has
no size or time limit) and switched TLS verification off process-wide; this module
exists so that never happens again.

The module only needs Django for one optional setting, ``VIVA_FETCH_ALLOW_HOSTS``
(hosts or IP addresses that may be private; meant for tests against a local
server). It is read lazily, so the module works without Django settings.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3
from PIL import Image, UnidentifiedImageError
from requests.utils import requote_uri
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TOTAL_TIMEOUT",
    "IMAGE_FORMATS",
    "FetchError",
    "FetchedBytes",
    "FetchedImage",
    "ResolvedURL",
    "check_url",
    "default_allow_hosts",
    "fetch_bytes",
    "fetch_image",
    "is_forbidden_address",
    "verify_image",
]

DEFAULT_MAX_BYTES = 20 * 2**20
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_TIMEOUT = 10.0
DEFAULT_TOTAL_TIMEOUT = 30.0
MAX_REDIRECTS = 5

#: Formats we accept. Restricting Pillow to these keeps exotic plugins (EPS runs
#: Ghostscript, for instance) out of reach of files from the internet.
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF")

USER_AGENT = "VIVA video archive annotation (image fetcher)"

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
# NAT64 well-known prefix: the last 32 bits are an IPv4 address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class FetchError(Exception):
    """A URL could not be fetched; ``message`` is meant for archivists.

    ``code`` is a short machine-readable reason so callers (the crawler, views)
    can react differently, e.g. to tell "offline" from "not an image":
    ``invalid_url``, ``scheme``, ``private``, ``dns``, ``connect``, ``timeout``,
    ``tls``, ``http``, ``redirect``, ``too_large``, ``not_image``,
    ``too_many_pixels``, ``too_small``, ``network``.
    """

    def __init__(self, message: str, *, code: str = "error", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        #: HTTP status for ``code == "http"``.
        self.status = status

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class FetchedBytes:
    """Raw answer of :func:`fetch_bytes` (after redirects)."""

    content: bytes
    content_type: str
    final_url: str
    status: int


@dataclass(frozen=True)
class FetchedImage:
    """A downloaded and verified image.

    ``content_type`` and ``format`` come from Pillow, not from the server's
    header, because servers often lie about them.
    """

    content: bytes
    content_type: str
    width: int
    height: int
    format: str
    final_url: str
    sha256: str


# --------------------------------------------------------------------------
# Settings and address checks
# --------------------------------------------------------------------------


def _django_settings() -> Any | None:
    """Return Django's settings if they are usable, else ``None``.

    Guarded so this module works in scripts and in tests run with
    ``-p no:django``. ``settings.configured`` is False until settings are first
    touched, so ``DJANGO_SETTINGS_MODULE`` is honoured as well.
    """
    try:
        from django.conf import settings
    except ImportError:  # pragma: no cover - Django is a dependency of VIVA
        return None
    try:
        if settings.configured or os.environ.get("DJANGO_SETTINGS_MODULE"):
            settings.DEBUG  # noqa: B018 - forces the lazy settings to load
            return settings
    except Exception:  # noqa: BLE001 - broken settings must not break fetching
        return None
    return None


def default_allow_hosts() -> frozenset[str]:
    """Hosts/IPs from ``settings.VIVA_FETCH_ALLOW_HOSTS`` (empty without Django)."""
    settings = _django_settings()
    if settings is None:
        return frozenset()
    hosts = getattr(settings, "VIVA_FETCH_ALLOW_HOSTS", None) or ()
    return frozenset(_normalize_host(str(h)) for h in hosts)


def _normalize_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """IPv4 address hidden in an IPv6 one (mapped, 6to4, Teredo, NAT64)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_forbidden_address(
    address: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> bool:
    """True if connecting to ``address`` could reach something internal.

    ``is_global`` alone is not enough: multicast ranges count as global in
    :mod:`ipaddress`, and IPv6 can carry an IPv4 address inside it.
    """
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None and is_forbidden_address(inner):
            return True
    return (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


@dataclass(frozen=True)
class ResolvedURL:
    """A checked URL: where to connect and what to say to the server."""

    url: str
    scheme: str
    host: str  # ASCII host name or IP literal, without brackets
    port: int
    path: str  # request target: path + query
    addresses: tuple[str, ...]  # checked IPs, in getaddrinfo order

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _parse_url(url: str) -> tuple[str, str, int, str]:
    """Split and validate ``url``; returns (scheme, ascii_host, port, target)."""
    if not isinstance(url, str) or not url.strip():
        raise FetchError("Please enter a web address.", code="invalid_url")
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError("This web address is not valid.", code="invalid_url") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError("The address must start with http:// or https://", code="scheme")
    if parts.username is not None or parts.password is not None:
        raise FetchError(
            "Addresses with a user name or password cannot be fetched.",
            code="invalid_url",
        )
    host = parts.hostname
    if not host:
        raise FetchError("The address has no host name.", code="invalid_url")
    host = _normalize_host(host)
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise FetchError(
                "The host name in this address is not valid.", code="invalid_url"
            ) from exc
    else:
        if "%" in host:  # zone ids only make sense for link-local addresses
            raise FetchError(
                "This address points to a private network and cannot be fetched.",
                code="private",
            )
    if port is None:
        port = 443 if scheme == "https" else 80
    if not 0 < port < 65536:
        raise FetchError("This web address is not valid.", code="invalid_url")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return scheme, host, port, requote_uri(target)


def _resolve(host: str, port: int, timeout: float) -> list[str]:
    """Resolve ``host`` to IP strings, giving up after ``timeout`` seconds.

    :func:`socket.getaddrinfo` has no timeout of its own, so it runs in a
    daemon thread and we stop waiting after ``timeout``; a stuck lookup then
    cannot hold a web request or a job. A plain thread (not a pool) stays
    correct in forked workers (Celery prefork, gunicorn).
    """
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    box: dict[str, Any] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=lookup, name=f"viva-dns-{host}", daemon=True).start()
    if not done.wait(max(timeout, 0.01)):
        raise FetchError(
            f"The name {host} could not be looked up within {timeout:g} seconds.",
            code="dns",
        )
    error = box.get("error")
    if isinstance(error, (socket.gaierror, UnicodeError)):
        raise FetchError(
            f"The name {host} could not be found. Check the address, or whether "
            "this machine is connected to the internet.",
            code="dns",
        ) from error
    if error is not None:
        raise FetchError(
            f"The name {host} could not be looked up ({error}).", code="dns"
        ) from error
    infos = box["infos"]
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise FetchError(f"The name {host} could not be found.", code="dns")
    return addresses


def check_url(
    url: str,
    *,
    allow_private: Collection[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ResolvedURL:
    """Validate ``url`` and resolve its host; raise :class:`FetchError` if unsafe.

    Exposed for forms that want to reject a bad address early; the fetch
    functions call it for every hop anyway.
    """
    allowed = (
        default_allow_hosts()
        if allow_private is None
        else frozenset(_normalize_host(h) for h in allow_private)
    )
    scheme, host, port, path = _parse_url(url)
    addresses = _resolve(host, port, timeout)
    host_allowed = host in allowed
    for address in addresses:
        if host_allowed or address in allowed:
            continue
        if is_forbidden_address(address):
            raise FetchError(
                "This address points to a private network and cannot be fetched.",
                code="private",
            )
    return ResolvedURL(url, scheme, host, port, path, tuple(addresses))


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


def _pool_for(target: ResolvedURL, address: str, timeout: urllib3.Timeout) -> Any:
    """A one-connection pool that connects to ``address`` (the checked IP).

    For HTTPS the certificate is still checked against the host *name* and the
    name is sent via SNI, so pinning the IP does not weaken TLS.
    """
    common: dict[str, Any] = {
        "host": address,
        "port": target.port,
        "maxsize": 1,
        "retries": False,
        "timeout": timeout,
    }
    if target.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            server_hostname=target.host,
            assert_hostname=target.host,
            **common,
        )
    return urllib3.HTTPConnectionPool(**common)


class _Deadline:
    def __init__(self, total: float) -> None:
        self.total = total
        self.end = time.monotonic() + total

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def check(self) -> None:
        if self.remaining() <= 0:
            raise FetchError(
                f"The download took longer than {self.total:g} seconds.",
                code="timeout",
            )


def _open(
    target: ResolvedURL,
    headers: Mapping[str, str],
    timeout: float,
    deadline: _Deadline,
) -> tuple[Any, Any]:
    """Send the GET to the first checked address that accepts a connection."""
    last_error: FetchError | None = None
    for address in target.addresses:
        deadline.check()
        per_call = max(min(timeout, deadline.remaining()), 0.01)
        pool = _pool_for(target, address, urllib3.Timeout(connect=per_call, read=per_call))
        try:
            response = pool.urlopen(
                "GET",
                target.path,
                headers={**headers, "Host": target.host_header},
                redirect=False,
                retries=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=True,
            )
        except (ConnectTimeoutError, NewConnectionError) as exc:
            pool.close()
            # NewConnectionError subclasses ConnectTimeoutError, so test it first.
            if not isinstance(exc, NewConnectionError) or "timed out" in str(exc):
                last_error = FetchError(
                    f"The server did not answer within {timeout:g} seconds.",
                    code="timeout",
                )
            else:
                last_error = FetchError(
                    f"The server {target.host} could not be reached.", code="connect"
                )
            continue  # nothing was sent yet, so another address is safe to try
        except ReadTimeoutError as exc:
            pool.close()
            raise FetchError(
                f"The server did not answer within {timeout:g} seconds.",
                code="timeout",
            ) from exc
        except SSLError as exc:
            pool.close()
            raise FetchError(
                f"The secure connection to {target.host} failed "
                "(its certificate could not be verified).",
                code="tls",
            ) from exc
        except (ProtocolError, urllib3.exceptions.HTTPError, OSError) as exc:
            pool.close()
            raise FetchError(f"The connection to {target.host} failed.", code="network") from exc
        return pool, response
    assert last_error is not None
    raise last_error


def _read_body(response: Any, max_bytes: int, timeout: float, deadline: _Deadline) -> bytes:
    length = response.headers.get("Content-Length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            declared = -1
        if declared > max_bytes:
            raise FetchError(_too_large_message(max_bytes), code="too_large")
    buffer = io.BytesIO()
    size = 0
    try:
        while True:
            deadline.check()
            chunk = response.read1(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(_too_large_message(max_bytes), code="too_large")
            buffer.write(chunk)
    except ReadTimeoutError as exc:
        raise FetchError(
            f"The server did not answer within {timeout:g} seconds.", code="timeout"
        ) from exc
    except (ProtocolError, urllib3.exceptions.HTTPError, OSError) as exc:
        raise FetchError(
            "The connection was interrupted during the download.", code="network"
        ) from exc
    return buffer.getvalue()


def _too_large_message(max_bytes: int) -> str:
    if max_bytes >= 2**20:
        return f"The file is larger than {max_bytes / 2**20:g} MB."
    return f"The file is larger than {max_bytes / 2**10:g} KB."


def fetch_bytes(
    url: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT,
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
    allow_private: Collection[str] | None = None,
    headers: Mapping[str, str] | None = None,
    accept_response: Callable[[str], None] | None = None,
) -> FetchedBytes:
    """GET ``url`` under all rules of this module and return the body.

    ``timeout`` bounds each connect/read and the DNS lookup; ``total_timeout``
    bounds the whole call (all redirects and the body). ``allow_private`` is a
    set of hosts or IPs that may be private; ``None`` reads
    ``settings.VIVA_FETCH_ALLOW_HOSTS``. ``accept_response`` is called with the
    final ``Content-Type`` before the body is read and may raise
    :class:`FetchError` to stop early (used to refuse HTML pages as images).
    """
    deadline = _Deadline(total_timeout)
    allowed = (
        default_allow_hosts()
        if allow_private is None
        else frozenset(_normalize_host(h) for h in allow_private)
    )
    request_headers = {
        "User-Agent": USER_AGENT,
        "Accept": "*/*",
        "Accept-Encoding": "gzip, deflate",
        **(headers or {}),
    }
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        deadline.check()
        target = check_url(
            current,
            allow_private=allowed,
            timeout=max(min(timeout, deadline.remaining()), 0.01),
        )
        pool, response = _open(target, request_headers, timeout, deadline)
        try:
            status = response.status
            if status in _REDIRECT_STATUSES:
                location = response.headers.get("Location")
                if not location:
                    raise FetchError(
                        "The server sent a redirect without a destination.",
                        code="redirect",
                    )
                current = urljoin(target.url, location.strip())
                continue
            if status >= 400 or status < 200:
                raise FetchError(
                    f"The server answered with an error (HTTP {status}).",
                    code="http",
                    status=status,
                )
            content_type = response.headers.get("Content-Type", "")
            if accept_response is not None:
                accept_response(content_type)
            body = _read_body(response, max_bytes, timeout, deadline)
            return FetchedBytes(body, content_type, target.url, status)
        finally:
            response.release_conn()
            response.close()
            pool.close()
    raise FetchError(f"The address redirected more than {MAX_REDIRECTS} times.", code="redirect")


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------


def _open_formats() -> list[str]:
    """Plugins to try; MPO has none of its own (the JPEG plugin returns it)."""
    Image.init()
    return [name for name in IMAGE_FORMATS if name in Image.OPEN]


def _open_image(content: bytes) -> Image.Image:
    """Open (header only) with bomb warnings turned into errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(content), formats=_open_formats())


def verify_image(
    content: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: tuple[int, int] = (0, 0),
) -> tuple[str, int, int]:
    """Check that ``content`` is an image we accept; return (format, w, h).

    The size is taken from the header and checked against ``max_pixels`` before
    :meth:`PIL.Image.Image.verify` runs, so a small file declaring a huge image
    is refused without being decoded. Also usable for uploaded files.
    """
    not_image = FetchError("The file is not an image.", code="not_image")
    try:
        with _open_image(content) as image:
            width, height = image.size
            image_format = image.format or ""
            _check_pixels(width, height, max_pixels)
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.verify()
        # verify() leaves the object unusable; reopen to confirm it still parses.
        with _open_image(content) as image:
            if image.size != (width, height):
                raise not_image
    except FetchError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FetchError(
            "The image is too large (it declares more pixels than allowed).",
            code="too_many_pixels",
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise not_image from exc
    except Exception as exc:
        raise not_image from exc
    if image_format not in IMAGE_FORMATS:
        raise not_image
    min_width, min_height = min_size
    if width < min_width or height < min_height:
        raise FetchError(
            f"The image is too small ({width}×{height} pixels; at least "
            f"{min_width}×{min_height} are needed).",
            code="too_small",
        )
    return image_format, width, height


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise FetchError("The file is not an image.", code="not_image")
    if width * height > max_pixels:
        raise FetchError(
            f"The image is too large ({width * height / 1e6:.1f} megapixels; at "
            f"most {max_pixels / 1e6:g} are allowed).",
            code="too_many_pixels",
        )


def _refuse_non_images(content_type: str) -> None:
    """Stop before downloading pages that are clearly not images."""
    main = content_type.split(";", 1)[0].strip().lower()
    if main.startswith("text/") or main in (
        "application/json",
        "application/xhtml+xml",
        "application/xml",
        "application/javascript",
    ):
        raise FetchError("The file is not an image.", code="not_image")


def fetch_image(
    url: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout: float = DEFAULT_TIMEOUT,
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
    min_size: tuple[int, int] = (0, 0),
    allow_private: Collection[str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> FetchedImage:
    """Download ``url`` and return it only if it is a sane image.

    Raises :class:`FetchError` (with a message for the user) for any problem:
    unsafe address, network trouble, too big, not an image, too many pixels or
    smaller than ``min_size`` (width, height).
    """
    fetched = fetch_bytes(
        url,
        max_bytes=max_bytes,
        timeout=timeout,
        total_timeout=total_timeout,
        allow_private=allow_private,
        headers={"Accept": "image/*", **(headers or {})},
        accept_response=_refuse_non_images,
    )
    image_format, width, height = verify_image(
        fetched.content, max_pixels=max_pixels, min_size=min_size
    )
    return FetchedImage(
        content=fetched.content,
        content_type=Image.MIME.get(image_format, "application/octet-stream"),
        width=width,
        height=height,
        format=image_format,
        final_url=fetched.final_url,
        sha256=hashlib.sha256(fetched.content).hexdigest(),
    )
