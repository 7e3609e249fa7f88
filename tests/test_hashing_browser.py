"""In a real browser with a real worker: a trainer fits unsupervised hash codes with one
click on the "Hash codes" page, watches the job's progress and log, and then sees the new
active model with the warning about random weights and the link to re-index."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.fixtures_browser import login, screenshot
from tests.test_grid_views import make_stills
from training.registry import active_version
from viva.models import Job

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.mark.worker
@pytest.mark.slow
def test_fit_codes_from_the_page(page, live_server, celery_worker, users, tmp_path):
    make_stills(6, tmp_path)
    login(page, live_server, users["trainer"])
    page.goto(live_server.url + reverse("retrieval:hashing"))
    assert page.get_by_test_id("no-model").is_visible()
    page.click("#fit-form summary")
    page.fill("#fit-form input[name=sample_size]", "50")
    page.select_option("#fit-form select[name=network]", "tiny-cnn")
    page.select_option("#fit-form select[name=init]", "random")
    page.get_by_test_id("fit").click()
    page.wait_for_url("**/retrieve/hashing/?job=*")
    job = Job.objects.get(kind="fit_hash_codes")
    status = page.locator("#run [data-field=status]")
    assert status.is_visible()
    # the page follows the job by itself and reloads once it has finished
    page.wait_for_selector(
        "[data-testid=active-model] [data-testid=random-warning]", timeout=150_000
    )
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, (job.error, celery_worker.output()[-3000:])
    version = active_version("hashing")
    active = page.get_by_test_id("active-model").inner_text()
    assert f"v{version.version}" in active and "unsupervised" in active
    assert "has to be (re)indexed" in active
    assert page.locator("#run [data-field=status]").inner_text() == "Succeeded"
    assert "being indexed" in page.locator("#run [data-field=summary]").inner_text()
    screenshot(page, "hashing-after-fit", full_page=True)
    assert page.viva_errors == []
