"""The retrieval page in a real browser: ranked keyframes with scores, negative feedback.

Screenshot: var/test/screens/retrieval-ranked.png.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from annotation.models import Annotation, AnnotationEvent
from tests.fixtures_browser import login, screenshot
from tests.test_retrieval import make_archive
from viva.models import Profile

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_ranked_page_feedback(page, live_server, users, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    arch = make_archive(write_files=True)
    category = arch["A"]
    Profile.objects.filter(user=users["annotator"]).update(grid_rows=2, grid_cols=3)
    login(page, live_server, users["annotator"])
    page.goto(live_server.url + reverse("annotation:categories"))
    page.click(f"tr[data-category='{category.pk}'] button:has-text('Select')")
    page.goto(live_server.url + reverse("retrieval:ranked"))
    page.wait_for_selector("#vgrid.ready")
    scores = page.eval_on_selector_all(".vcell-extra", "els => els.map(e => e.textContent)")
    assert scores == [
        "score 0.95",
        "score 0.90",
        "score 0.80",
        "score 0.70",
        "score 0.60",
        "score 0.30",
    ]
    keys = page.eval_on_selector_all(".vcell", "cells => cells.map(c => c.dataset.key)")
    assert keys[0] == str(arch["i"][5].pk)
    screenshot(page, "retrieval-ranked")

    # The best hit is wrong: mark it negative (key 2 on the cursor cell) and save.
    page.keyboard.press("2")
    with page.expect_request("**/labels/save/") as request_info:
        page.click("button.vgrid-save")
    assert '"source": "feedback"' in request_info.value.post_data.replace('":"', '": "')
    page.wait_for_selector(".vgrid-dirty:has-text('All saved')")
    ann = Annotation.objects.get(category=category, image=arch["i"][5])
    assert (ann.value, ann.source) == (-1, "feedback")
    assert AnnotationEvent.objects.get(image_id=arch["i"][5].pk).source == "feedback"

    # Hiding labelled images removes it from the ranked list.
    page.goto(live_server.url + reverse("retrieval:ranked") + "?hide_labelled=1")
    page.wait_for_selector("#vgrid.ready")
    keys = page.eval_on_selector_all(".vcell", "cells => cells.map(c => c.dataset.key)")
    assert str(arch["i"][5].pk) not in keys and len(keys) == 5
    assert not page.viva_errors, page.viva_errors


def test_combined_search_and_export_pages(page, live_server, users, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    arch = make_archive(write_files=True)
    login(page, live_server, users["researcher"])
    page.goto(live_server.url + reverse("retrieval:search"))
    # Fill two rows of the form: A AND B, min 0.5 each; the page redirects to a t= URL.
    page.locator("select[name=term_category]").nth(0).select_option(str(arch["A"].pk))
    page.locator("select[name=term_category]").nth(1).select_option(str(arch["B"].pk))
    page.fill("input[name=year_to]", "1980")
    page.click("button:has-text('Search')")
    page.wait_for_url("**t=concept*")
    page.wait_for_selector("#vgrid.ready")
    assert page.locator("#vgrid").get_attribute("class").count("readonly") == 1
    scores = page.eval_on_selector_all(".vcell-extra", "els => els.map(e => e.textContent)")
    assert scores == ["score 0.80", "score 0.60"]
    shared = page.input_value("[data-testid=share-url]")
    assert "year_to=1980" in shared
    screenshot(page, "retrieval-search")
    page.click("a:has-text('Export…')")
    page.wait_for_selector("[data-testid=segments-form]")
    page.click("[data-testid=segments-form] button[type=submit]")
    page.wait_for_url("**/jobs/*/")
    screenshot(page, "retrieval-export-job")
    assert not page.viva_errors, page.viva_errors
