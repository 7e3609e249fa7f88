"""Browser fixtures: Playwright's sync API driving Debian's Chromium (DESIGN.md section 6).

Use in a test module marked ``pytest.mark.browser``::

    @pytest.mark.browser
    @pytest.mark.django_db(transaction=True)
    def test_something(page, live_server, users):
        login(page, live_server, users["admin"])
        page.goto(live_server.url + reverse("jobs:list"))
        screenshot(page, "jobs")

``browser`` (session) launches Chromium once; ``page`` (function) is a fresh context
(no cookies) at 1280×800, the size pages must be readable at. Tests skip with a clear
reason when Chromium or Playwright is missing (CI installs ``chromium``); set
``VIVA_TEST_CHROMIUM`` to use another binary. Screenshots go to ``var/test/screens/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

CHROMIUM = Path(os.environ.get("VIVA_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 15_000


def screens_dir() -> Path:
    path = Path(settings.VAR_DIR) / "screens"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium chromium-driver)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed")
    # Playwright's sync API keeps an event loop in this thread; Django would then refuse ORM
    # calls from the test ("SynchronousOnlyOperation"). The tests are synchronous code, so
    # this is safe; it stays set for the rest of the session because the loop does too.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    try:
        instance = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
    except Exception:
        playwright.stop()
        raise
    yield instance
    instance.close()
    playwright.stop()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser):
    """A fresh browser context and page; collects console errors and failed requests.

    ``page.viva_errors`` lists them so tests can assert that a page loaded cleanly."""
    context = browser.new_context(viewport=VIEWPORT, locale="en-US")
    context.set_default_timeout(TIMEOUT_MS)
    new_page = context.new_page()
    errors: list[str] = []
    new_page.on(
        "console",
        lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    new_page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))

    def request_failed(request) -> None:
        # Navigating away aborts requests still in flight (often the favicon): not an error.
        if "ERR_ABORTED" not in (request.failure or ""):
            errors.append(f"request failed: {request.url} ({request.failure})")

    new_page.on("requestfailed", request_failed)
    new_page.on(
        "response",
        lambda res: errors.append(f"HTTP {res.status}: {res.url}") if res.status >= 400 else None,
    )
    new_page.viva_errors = errors
    yield new_page
    context.close()


def login(page, live_server, user, password: str | None = None) -> None:
    """Log in through the login form and wait for the overview page."""
    from tests.conftest import PASSWORD

    page.goto(live_server.url + reverse("login"))
    page.fill("input[name=username]", user.get_username())
    page.fill("input[name=password]", password or PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(live_server.url + reverse("home"))


def screenshot(page, name: str, *, full_page: bool = False) -> Path:
    path = screens_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
