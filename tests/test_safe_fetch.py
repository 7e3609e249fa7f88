"""Tests for annotation.safe_fetch (DESIGN.md section 8: URL fetching rules).

Everything runs against a local HTTP server on 127.0.0.1; nothing touches the
network. Addresses that must be refused (169.254.169.254, 10.0.0.1, ...) are
checked to be refused *before* any connection is attempted.

Runs standalone (``python -m pytest -p no:django tests/test_safe_fetch.py``)
and under pytest-django: Django settings are never required.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

from annotation import safe_fetch
from annotation.safe_fetch import FetchError, fetch_bytes, fetch_image, verify_image

LOCAL = frozenset({"127.0.0.1"})


# --------------------------------------------------------------------------
# Test data
# --------------------------------------------------------------------------


def make_image(fmt: str, size: tuple[int, int] = (300, 200)) -> bytes:
    image = Image.new("RGB", size, (200, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def make_png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width``×``height`` black pixels.

    All-zero rows compress extremely well, so the file stays tiny (tens of KB)
    while declaring a huge image. Written by hand because letting Pillow build
    the image first would need one byte per pixel of memory.
    """

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height))
    data += compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


PNG = make_image("PNG")
JPEG = make_image("JPEG")
SMALL_PNG = make_image("PNG", (32, 32))
BOMB_PNG = make_png_bomb(20_000, 20_000)  # 400 MP: beyond Pillow's own limit
BIG_PNG = make_png_bomb(8_000, 8_000)  # 64 MP: only our 50 MP limit catches it


# --------------------------------------------------------------------------
# Local test server
# --------------------------------------------------------------------------


@dataclass
class Served:
    """What a route answers."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[[BaseHTTPRequestHandler, str], Served | None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Route]
    seen: list[tuple[str, str]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that give up (timeouts, size limits) are expected here."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Keep test output clean."""

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self.server.seen.append((path, self.headers.get("Host", "")))
        route = self.server.routes.get(path)
        if route is None:
            answer: Served | None = Served(b"not found", 404)
        else:
            answer = route(self, self._base())
        if answer is None:  # the route wrote its own answer
            return
        self.send_response(answer.status)
        headers = {"Content-Length": str(len(answer.body)), **answer.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(answer.body)

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


def _static(body: bytes, content_type: str) -> Route:
    return lambda _h, _base: Served(body, headers={"Content-Type": content_type})


def _redirect(location: str) -> Route:
    return lambda _h, base: Served(status=302, headers={"Location": location.format(base=base)})


def _slow(handler: BaseHTTPRequestHandler, _base: str) -> Served:
    time.sleep(2)
    return Served(PNG, headers={"Content-Type": "image/png"})


def _drip(handler: BaseHTTPRequestHandler, _base: str) -> None:
    """Answers quickly, then sends one byte every 50 ms (never a read timeout)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    try:
        for _ in range(60):
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.05)
    except OSError:
        pass


def _declared_huge(handler: BaseHTTPRequestHandler, _base: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Length", str(25 * 2**20))
    handler.end_headers()
    handler.wfile.write(b"\x89PNG")


def _stream_big(handler: BaseHTTPRequestHandler, _base: str) -> None:
    """2 MB without Content-Length (ends when the connection closes)."""
    handler.close_connection = True
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.end_headers()
    try:
        for _ in range(32):
            handler.wfile.write(b"\0" * 65536)
    except OSError:
        pass


ROUTES: dict[str, Route] = {
    "/image.png": _static(PNG, "image/png"),
    "/image.jpg": _static(JPEG, "image/jpeg"),
    "/small.png": _static(SMALL_PNG, "image/png"),
    "/octet.png": _static(PNG, "application/octet-stream"),
    "/text.txt": _static(b"just some text", "text/plain"),
    "/disguised.png": _static(b"<html>not an image</html>", "image/png"),
    "/bomb.png": _static(BOMB_PNG, "image/png"),
    "/big.png": _static(BIG_PNG, "image/png"),
    "/declared-huge": _declared_huge,
    "/stream-big": _stream_big,
    "/slow": _slow,
    "/drip": _drip,
    "/redirect-ok": _redirect("{base}/image.png"),
    "/redirect-relative": _redirect("/image.png"),
    "/redirect-metadata": _redirect("http://169.254.169.254/latest/meta-data/"),
    "/redirect-private": _redirect("http://10.0.0.1/"),
    "/redirect-ipv6": _redirect("http://[::1]/"),
    "/redirect-file": _redirect("file:///etc/passwd"),
    "/redirect-loop": _redirect("{base}/redirect-loop"),
}


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.routes = ROUTES
    httpd.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def base(server: _Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


@pytest.fixture(autouse=True)
def no_settings_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ignore VIVA_FETCH_ALLOW_HOSTS from real settings (pytest-django runs).

    The "refused when not allowed" tests must not depend on whether the test
    settings allow 127.0.0.1.
    """
    monkeypatch.setattr(safe_fetch, "_django_settings", lambda: None)


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every address a connection pool is created for."""
    made: list[str] = []
    original = safe_fetch._pool_for

    def recording(target: Any, address: str, timeout: Any) -> Any:
        made.append(address)
        return original(target, address, timeout)

    monkeypatch.setattr(safe_fetch, "_pool_for", recording)
    return made


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Host name → addresses; other names use the real resolver (IP literals)."""
    table: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in table:
            if not table[host]:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [
                (
                    socket.AF_INET6 if ":" in ip else socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    (ip, port),
                )
                for ip in table[host]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def assert_refused(exc: pytest.ExceptionInfo[FetchError], code: str) -> None:
    assert exc.value.code == code, exc.value.message
    assert exc.value.message  # something an archivist can read
    assert str(exc.value) == exc.value.message


# --------------------------------------------------------------------------
# Schemes and addresses
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.org/image.jpg",
        "gopher://example.org/",
        "javascript:alert(1)",
        "data:image/png;base64,iVBORw0KGgo=",
        "//example.org/image.jpg",
    ],
)
def test_only_http_and_https(url: str, connections: list[str]) -> None:
    with pytest.raises(FetchError) as exc:
        fetch_image(url)
    assert_refused(exc, "scheme")
    assert "http:// or https://" in exc.value.message
    assert connections == []


@pytest.mark.parametrize("url", ["", "   ", "http://", "http://[::1/"])
def test_invalid_addresses(url: str) -> None:
    with pytest.raises(FetchError) as exc:
        fetch_image(url)
    assert exc.value.code == "invalid_url"


def test_credentials_in_url_refused(connections: list[str]) -> None:
    with pytest.raises(FetchError) as exc:
        fetch_image("http://user:secret@127.0.0.1/image.png", allow_private=LOCAL)
    assert_refused(exc, "invalid_url")
    assert connections == []


def test_loopback_refused_when_not_allowed(base: str, connections: list[str]) -> None:
    with pytest.raises(FetchError) as exc:
        fetch_image(f"{base}/image.png")
    assert_refused(exc, "private")
    assert "private network" in exc.value.message
    assert connections == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://10.255.1.2:8080/image.png",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://100.64.0.1/",  # carrier-grade NAT
        "http://0.0.0.0/",
        "http://224.0.0.1/",  # multicast
        "http://240.0.0.1/",  # reserved
        "http://localhost/",
        "http://2130706433/",  # 127.0.0.1 written as one number
        "http://[::1]/",
        "http://[::]/",
        "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
        "http://[::ffff:169.254.169.254]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[ff02::1]/",
        "http://[2002:7f00:1::1]/",  # 6to4 wrapping 127.0.0.1
        "http://[64:ff9b::a00:1]/",  # NAT64 wrapping 10.0.0.1
        "https://169.254.169.254/",
    ],
)
def test_private_addresses_refused_before_connecting(url: str, connections: list[str]) -> None:
    with pytest.raises(FetchError) as exc:
        fetch_bytes(url)
    assert_refused(exc, "private")
    assert connections == []


def test_allow_list_is_per_address(base: str, connections: list[str]) -> None:
    """Allowing 127.0.0.1 does not allow the metadata service."""
    allow = {"127.0.0.1"}
    assert fetch_image(f"{base}/image.png", allow_private=allow).width == 300
    with pytest.raises(FetchError) as exc:
        fetch_image("http://169.254.169.254/", allow_private=allow)
    assert_refused(exc, "private")
    assert "169.254.169.254" not in connections


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("93.184.216.34", False),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("169.254.169.254", True),
        ("::1", True),
        ("::ffff:10.0.0.1", True),
        ("2002:0a00:0001::1", True),
        ("64:ff9b::7f00:1", True),
        ("239.255.255.250", True),
    ],
)
def test_is_forbidden_address(address: str, forbidden: bool) -> None:
    assert safe_fetch.is_forbidden_address(address) is forbidden


# --------------------------------------------------------------------------
# DNS
# --------------------------------------------------------------------------


def test_refused_if_any_resolved_address_is_private(
    fake_dns: dict[str, list[str]], connections: list[str]
) -> None:
    fake_dns["mixed.example.test"] = ["93.184.216.34", "10.0.0.5"]
    with pytest.raises(FetchError) as exc:
        fetch_image("http://mixed.example.test/image.png")
    assert_refused(exc, "private")
    assert connections == []


def test_connects_to_the_checked_address(
    base: str, server: _Server, fake_dns: dict[str, list[str]], connections: list[str]
) -> None:
    """The host name is resolved once; the connection goes to that address,
    while the server still sees the name in the Host header (as it would for
    virtual hosting, and as TLS uses for SNI)."""
    port = urlsplit(base).port
    fake_dns["images.example.test"] = ["127.0.0.1"]
    image = fetch_image(f"http://images.example.test:{port}/image.png", allow_private=LOCAL)
    assert image.width == 300
    assert connections == ["127.0.0.1"]
    assert ("/image.png", f"images.example.test:{port}") in server.seen


def test_unknown_host(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["nowhere.example.test"] = []
    with pytest.raises(FetchError) as exc:
        fetch_image("http://nowhere.example.test/image.png")
    assert_refused(exc, "dns")
    assert "nowhere.example.test" in exc.value.message


def test_dns_lookup_has_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def hanging(*_args: Any, **_kwargs: Any) -> Any:
        time.sleep(1.0)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    started = time.monotonic()
    with pytest.raises(FetchError) as exc:
        fetch_image("http://slow-dns.example.test/", timeout=0.2)
    assert_refused(exc, "dns")
    assert time.monotonic() - started < 0.9


# --------------------------------------------------------------------------
# Redirects
# --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/redirect-ok", "/redirect-relative"])
def test_redirect_followed(base: str, path: str) -> None:
    image = fetch_image(f"{base}{path}", allow_private=LOCAL)
    assert image.final_url == f"{base}/image.png"
    assert image.sha256 == hashlib.sha256(PNG).hexdigest()


@pytest.mark.parametrize(
    ("path", "code", "never"),
    [
        ("/redirect-metadata", "private", "169.254.169.254"),
        ("/redirect-private", "private", "10.0.0.1"),
        ("/redirect-ipv6", "private", "::1"),
        ("/redirect-file", "scheme", None),
    ],
)
def test_redirect_to_forbidden_target_refused(
    base: str, path: str, code: str, never: str | None, connections: list[str]
) -> None:
    """The first hop is the allowed local server; the second must be refused
    before any connection is attempted."""
    with pytest.raises(FetchError) as exc:
        fetch_image(f"{base}{path}", allow_private=LOCAL)
    assert_refused(exc, code)
    assert connections == ["127.0.0.1"]
    assert never not in connections


def test_redirect_limit(base: str, connections: list[str]) -> None:
    with pytest.raises(FetchError) as exc:
        fetch_image(f"{base}/redirect-loop", allow_private=LOCAL)
    assert_refused(exc, "redirect")
    assert len(connections) == safe_fetch.MAX_REDIRECTS + 1


# --------------------------------------------------------------------------
# Size, content and time limits
# --------------------------------------------------------------------------


def test_valid_png(base: str) -> None:
    image = fetch_image(f"{base}/image.png", allow_private=LOCAL)
    assert image.content == PNG
    assert image.sha256 == hashlib.sha256(PNG).hexdigest()
    assert (image.width, image.height) == (300, 200)
    assert image.format == "PNG"
    assert image.content_type == "image/png"
    assert image.final_url == f"{base}/image.png"


def test_valid_jpeg_with_wrong_content_type(base: str) -> None:
    """The type comes from Pillow, not from the server's header."""
    image = fetch_image(f"{base}/image.jpg", allow_private=LOCAL)
    assert (image.format, image.content_type) == ("JPEG", "image/jpeg")
    assert image.sha256 == hashlib.sha256(JPEG).hexdigest()
    assert fetch_image(f"{base}/octet.png", allow_private=LOCAL).format == "PNG"


def test_declared_oversized_body_refused(base: str) -> None:
    with pytest.raises(FetchError) as exc:
        fetch_image(f"{base}/declared-huge", allow_private=LOCAL)
    assert_refused(exc, "too_large")
    assert exc.value.message == "The file is larger than 20 MB."


def test_streamed_oversized_body_refused(base: str) -> None:
    """No Content-Length: the bytes themselves are counted."""
    with pytest.raises(FetchError) as exc:
        fetch_bytes(f"{base}/stream-big", allow_private=LOCAL, max_bytes=2**20)
    assert_refused(exc, "too_large")
    assert "1 MB" in exc.value.message


def test_text_is_not_an_image(base: str) -> None:
    with pytest.raises(FetchError) as exc:
        fetch_image(f"{base}/text.txt", allow_private=LOCAL)
    assert_refused(exc, "not_image")
    assert exc.value.message == "The file is not an image."


def test_disguised_text_is_not_an_image(base: str) -> None:
    with pytest.raises(FetchError) as exc:
        fetch_image(f"{base}/disguised.png", allow_private=LOCAL)
    assert_refused(exc, "not_image")


def test_fetch_bytes_returns_text(base: str) -> None:
    """fetch_bytes is for pages and JSON, so it does not check for images."""
    fetched = fetch_bytes(f"{base}/text.txt", allow_private=LOCAL)
    assert fetched.content == b"just some text"
    assert fetched.content_type == "text/plain"
    assert fetched.status == 200


def test_decompression_bomb_refused(base: str) -> None:
    assert len(BOMB_PNG) < 200_000  # tiny file ...
    with pytest.raises(FetchError) as exc:  # ... declaring 400 megapixels
        fetch_image(f"{base}/bomb.png", allow_private=LOCAL)
    assert_refused(exc, "too_many_pixels")
    assert "too large" in exc.value.message


def test_pixel_limit_checked_before_decoding(base: str) -> None:
    """64 MP is below Pillow's own bomb limit but above ours (50 MP)."""
    with pytest.raises(FetchError) as exc:
        fetch_image(f"{base}/big.png", allow_private=LOCAL)
    assert_refused(exc, "too_many_pixels")
    assert "64.0 megapixels" in exc.value.message
    # A higher limit lets the same (valid) file through.
    assert fetch_image(f"{base}/big.png", allow_private=LOCAL, max_pixels=70_000_000)


def test_min_size(base: str) -> None:
    with pytest.raises(FetchError) as exc:
        fetch_image(f"{base}/small.png", allow_private=LOCAL, min_size=(224, 224))
    assert_refused(exc, "too_small")
    assert "32×32" in exc.value.message


def test_http_error(base: str) -> None:
    with pytest.raises(FetchError) as exc:
        fetch_image(f"{base}/missing.png", allow_private=LOCAL)
    assert_refused(exc, "http")
    assert exc.value.status == 404
    assert "404" in exc.value.message


def test_read_timeout(base: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError) as exc:
        fetch_image(f"{base}/slow", allow_private=LOCAL, timeout=0.3)
    assert_refused(exc, "timeout")
    assert exc.value.message == "The server did not answer within 0.3 seconds."
    assert time.monotonic() - started < 1.5


def test_default_timeout_message() -> None:
    exc = FetchError(f"The server did not answer within {10.0:g} seconds.")
    assert exc.message == "The server did not answer within 10 seconds."
    assert safe_fetch.DEFAULT_TIMEOUT == 10.0


def test_overall_deadline(base: str) -> None:
    """A server that trickles bytes never trips the read timeout."""
    started = time.monotonic()
    with pytest.raises(FetchError) as exc:
        fetch_image(f"{base}/drip", allow_private=LOCAL, timeout=1, total_timeout=0.5)
    assert_refused(exc, "timeout")
    assert time.monotonic() - started < 2


def test_connection_refused(connections: list[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchError) as exc:
        fetch_image(f"http://127.0.0.1:{port}/", allow_private=LOCAL)
    assert_refused(exc, "connect")


# --------------------------------------------------------------------------
# verify_image on its own (also used for uploads)
# --------------------------------------------------------------------------


def test_verify_image_rejects_corrupt_png() -> None:
    broken = bytearray(PNG)
    broken[40] ^= 0xFF  # inside IDAT: the CRC check of verify() fails
    with pytest.raises(FetchError) as exc:
        verify_image(bytes(broken))
    assert exc.value.code == "not_image"


def test_verify_image_rejects_unsupported_formats() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buffer, format="PPM")
    with pytest.raises(FetchError) as exc:
        verify_image(buffer.getvalue())
    assert exc.value.code == "not_image"


def test_verify_image_ok() -> None:
    assert verify_image(JPEG) == ("JPEG", 300, 200)


# --------------------------------------------------------------------------
# TLS and settings
# --------------------------------------------------------------------------


@dataclass
class HttpsServer:
    port: int
    cert: Path


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[HttpsServer]:
    """An HTTPS server with a self-signed certificate for images.example.test."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(  # noqa: S603 - fixed arguments
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=images.example.test",
            "-addext",
            "subjectAltName=DNS:images.example.test",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.routes = ROUTES
    httpd.seen = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield HttpsServer(httpd.server_address[1], cert)
    httpd.shutdown()
    httpd.server_close()


def test_tls_certificates_are_verified(
    https_server: HttpsServer, fake_dns: dict[str, list[str]]
) -> None:
    """A certificate no trusted authority signed is refused."""
    fake_dns["images.example.test"] = ["127.0.0.1"]
    with pytest.raises(FetchError) as exc:
        fetch_image(
            f"https://images.example.test:{https_server.port}/image.png",
            allow_private=LOCAL,
            timeout=5,
        )
    assert_refused(exc, "tls")


def test_tls_checks_the_name_while_connecting_to_the_checked_address(
    https_server: HttpsServer,
    fake_dns: dict[str, list[str]],
    connections: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pinning the IP keeps SNI and the certificate check on the host name."""
    monkeypatch.setattr(safe_fetch.certifi, "where", lambda: str(https_server.cert))
    fake_dns["images.example.test"] = ["127.0.0.1"]
    fake_dns["other.example.test"] = ["127.0.0.1"]
    image = fetch_image(
        f"https://images.example.test:{https_server.port}/image.png",
        allow_private=LOCAL,
        timeout=5,
    )
    assert image.sha256 == hashlib.sha256(PNG).hexdigest()
    assert connections == ["127.0.0.1"]
    # Same server and address, but a name the certificate does not cover.
    with pytest.raises(FetchError) as exc:
        fetch_image(
            f"https://other.example.test:{https_server.port}/image.png",
            allow_private=LOCAL,
            timeout=5,
        )
    assert_refused(exc, "tls")


def test_allow_list_from_django_setting(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = SimpleNamespace(VIVA_FETCH_ALLOW_HOSTS=["127.0.0.1"])
    monkeypatch.setattr(safe_fetch, "_django_settings", lambda: settings)
    assert safe_fetch.default_allow_hosts() == frozenset({"127.0.0.1"})
    assert fetch_image(f"{base}/image.png").width == 300
    # An explicit (empty) allow list wins over the setting.
    with pytest.raises(FetchError) as exc:
        fetch_image(f"{base}/image.png", allow_private=())
    assert_refused(exc, "private")


def test_no_django_settings_means_no_allow_list() -> None:
    assert safe_fetch.default_allow_hosts() == frozenset()
