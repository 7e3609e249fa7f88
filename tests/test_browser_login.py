"""In a real browser: log in, see the workflow menu and the (small) demo archive."""

from __future__ import annotations

import pytest
from django.urls import NoReverseMatch, reverse

from tests.conftest import make_user
from tests.fixtures_browser import login, screenshot
from viva.context import MENU
from viva.ingest.importer import import_video
from viva.ingest.synth import make_synthetic_video
from viva.models import Collection, Image, Shot
from viva.models.users import Role

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SECTIONS = list(dict.fromkeys(section for section, *_ in MENU))


@pytest.fixture
def demo_archive(settings, tmp_path):
    """A collection with one imported synthetic video, like a tiny ``make_demo``."""
    settings.MEDIA_ROOT = tmp_path / "media"
    collection = Collection.objects.create(name="Demo archive", description="Synthetic footage")
    path = tmp_path / "Harbour at dawn 1968.mp4"
    truth = make_synthetic_video(path, n_scenes=3, size=(320, 180), seed=4)
    status, video = import_video(path, collection)
    assert status == "imported"
    return {"collection": collection, "video": video, "truth": truth}


def test_login_menu_and_demo_archive(page, live_server, demo_archive):
    admin = make_user("demo-admin", Role.ADMIN)
    video = demo_archive["video"]
    n_keyframes = Image.objects.filter(video=video).count()
    n_shots = Shot.objects.filter(video=video).count()

    # Anonymous visitors land on the login form.
    page.goto(live_server.url + reverse("home"))
    assert page.url.startswith(live_server.url + reverse("login"))
    login(page, live_server, admin)

    # The workflow menu, in order, with every section (stages not built yet are greyed out).
    headings = page.locator(".sidebar .nav-heading").all_inner_texts()
    assert [h.strip().lower() for h in headings] == [s.lower() for s in SECTIONS]
    for _section, label, name, _role in MENU:
        try:
            reverse(name)
        except NoReverseMatch:
            assert page.locator(".sidebar span.nav-link.disabled", has_text=label).count() == 1
        else:
            assert page.locator(".sidebar a.nav-link", has_text=label).count() >= 1, label
    assert page.locator(".sidebar a.nav-link.active").inner_text().strip() == "Overview"
    assert "demo-admin" in page.locator(".nav-user").inner_text()

    # The overview counts the archive and shows the video's first keyframe (served as media).
    assert page.get_by_test_id("count-videos").inner_text().strip() == "1"
    assert page.get_by_test_id("count-keyframes").inner_text().strip() == str(n_keyframes)
    thumb = page.locator(".thumbs img").first
    thumb.scroll_into_view_if_needed()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
    )
    shot = screenshot(page, "login")
    assert shot.stat().st_size > 10_000

    # Archive → Videos → the collection → the video with its shots.
    page.locator(".sidebar a.nav-link", has_text="Videos").click()
    page.get_by_role("link", name="Demo archive").click()
    page.wait_for_url(live_server.url + reverse("archive:collection", args=[video.collection_id]))
    assert video.title in page.locator("main").inner_text()
    screenshot(page, "collection")
    page.get_by_role("link", name=video.title).click()
    page.wait_for_url(live_server.url + reverse("archive:video", args=[video.pk]))
    body = page.locator("main").inner_text()
    assert video.title in body
    assert n_shots == len(demo_archive["truth"].shots)
    screenshot(page, "video", full_page=True)

    assert page.viva_errors == [], page.viva_errors


def test_wrong_password_is_refused(page, live_server):
    user = make_user("someone", Role.RESEARCHER)
    page.goto(live_server.url + reverse("login"))
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", "wrong-password")
    page.click("button[type=submit]")
    assert "did not match" in page.locator(".card").inner_text()
    assert page.locator(".sidebar").count() == 0


def test_researcher_menu_hides_what_they_may_not_do(page, live_server):
    researcher = make_user("reader", Role.RESEARCHER)
    login(page, live_server, researcher)
    menu = page.locator(".sidebar").inner_text()
    for _section, label, _name, role in MENU:
        if role > Role.RESEARCHER:
            assert label not in menu.splitlines(), label
    assert "Users" not in menu and "Import" not in menu
