"""Query by example in a real browser (issue 6): from a labelled positive image in the
label grid, "find similar" (≈), then label two of the results with the keyboard and the
mouse; the labels are stored with the source "similarity". Then the researcher's page
searches by upload. Real pieces: ITQ codes of a tiny random CNN, the FAISS index.
Screenshots: var/test/screens/similar-*.png.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from annotation.labels import save_labels
from annotation.models import Annotation, Category, Label, Source
from retrieval.search import indexing
from tests.fixtures_browser import login, screenshot
from tests.test_grid_views import _grid_cache, add_candidates, make_stills  # noqa: F401
from tests.test_similarity_service import fit_tiny_model, media, real_models  # noqa: F401
from viva.media import media_path
from viva.models import Job, Profile

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def archive(real_models, media, users):  # noqa: F811
    pytest.importorskip("retrieval.search.faiss_index")
    stills = make_stills(9, media / "in")
    version = fit_tiny_model()
    report = indexing.index_images(version)
    assert report.indexed == 9
    concept = Category.objects.create(name="Red things")
    add_candidates(concept, [stills[0]])
    save_labels(concept, [(stills[0].pk, Label.POSITIVE)], user=users["annotator"])
    Profile.objects.filter(user=users["annotator"]).update(grid_rows=2, grid_cols=4)
    return {"stills": stills, "concept": concept}


def test_find_similar_from_a_positive_and_label_two(page, live_server, users, archive):
    stills, concept = archive["stills"], archive["concept"]
    login(page, live_server, users["annotator"])
    page.goto(live_server.url + reverse("annotation:categories"))
    page.click(f"tr[data-category='{concept.pk}'] button:has-text('Select')")
    page.goto(live_server.url + reverse("annotation:label") + "?tab=all")
    page.wait_for_selector("#vgrid.ready")
    tile = page.locator(f".vcell[data-key='{stills[0].pk}']")
    assert tile.get_attribute("data-label") == "pos"
    link = tile.locator("a.vcell-similar")
    assert link.get_attribute("href").endswith(f"?image={stills[0].pk}")
    link.click()
    page.wait_for_url("**query=**")
    page.wait_for_selector("#vgrid.ready")
    keys = page.eval_on_selector_all(".vcell", "cells => cells.map(c => c.dataset.key)")
    assert str(stills[0].pk) not in keys and len(keys) == 8
    extras = page.eval_on_selector_all(".vcell-extra", "els => els.map(e => e.textContent)")
    assert all(e.startswith("distance ") for e in extras)
    screenshot(page, "similar-results")
    # First result with the keyboard, second with the mouse (click = positive).
    page.keyboard.press("1")
    page.locator(f".vcell[data-key='{keys[1]}'] .vcell-media").click()
    assert page.locator("#vgrid").get_attribute("data-unsaved") == "2"
    page.click("button.vgrid-save")
    page.wait_for_selector(".vgrid-dirty:has-text('All saved')")
    screenshot(page, "similar-labelled")
    labelled = Annotation.objects.filter(
        category=concept, image_id__in=[int(keys[0]), int(keys[1])], face__isnull=True
    )
    assert labelled.count() == 2
    assert {a.value for a in labelled} == {Label.POSITIVE}
    assert {a.source for a in labelled} == {Source.SIMILARITY}
    # `m` on a result searches again from that image.
    page.keyboard.press("m")
    page.wait_for_url("**query=**")
    page.wait_for_selector("#vgrid.ready")
    assert page.locator(".vcell").count() == 8


def test_researcher_searches_by_upload(page, live_server, users, archive):
    stills = archive["stills"]
    login(page, live_server, users["researcher"])
    page.goto(live_server.url + reverse("retrieval:similar"))
    assert "9 of 9 images" in page.inner_text("#index-status")
    form = page.locator("form[data-testid=query-images]")
    form.locator("input[type=file]").set_input_files(str(media_path(stills[4].file)))
    form.locator("select[name=scope]").select_option("all")
    form.locator("button[type=submit]").click()
    page.wait_for_url("**query=**")
    page.wait_for_selector("#vgrid.ready")
    first = page.locator(".vcell").first
    assert first.get_attribute("data-key") == str(stills[4].pk)
    assert first.locator(".vcell-extra").inner_text() == "distance 0"
    assert page.locator("button.vgrid-save").count() == 0  # read-only for researchers
    screenshot(page, "similar-researcher")


def test_trainer_builds_the_index_with_live_progress(page, live_server, users, real_models, media):  # noqa: F811
    """No hashing model yet: the page says so, one click starts the build, the progress
    bar follows the job, and the page turns "ready" when it ends. The test plays the
    worker (run_job in this process) with a tiny network instead of EfficientNet."""
    from viva.jobs import run_job

    pytest.importorskip("retrieval.search.faiss_index")
    make_stills(5, media / "in")
    login(page, live_server, users["trainer"])
    page.goto(live_server.url + reverse("retrieval:similar"))
    assert "Not built yet." in page.inner_text("#index-status")
    page.click("[data-testid=build-index]")
    page.wait_for_selector("#index-job [role=progressbar]")
    assert "No hashing model yet" in page.inner_text("body")
    # The button starts the "Hash codes" page's fit, which starts the indexing job.
    job = Job.objects.get(kind="fit_hash_codes")
    Job.objects.filter(pk=job.pk).update(
        params={**job.params, "network": "tiny-cnn", "init": "random", "device": "cpu"}
    )
    assert run_job(job.pk) == Job.Status.SUCCEEDED
    index_job = Job.objects.get(kind="index_images")
    if index_job.status == Job.Status.QUEUED:
        assert run_job(index_job.pk) == Job.Status.SUCCEEDED
    page.wait_for_selector("#index-status.ready", timeout=20_000)  # reloaded by similar.js
    assert "5 of 5 images indexed" in page.inner_text("#index-status")
    screenshot(page, "similar-built")
    assert not [e for e in page.viva_errors if "favicon" not in e]
