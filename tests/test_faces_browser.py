"""The face-indexing page in a real browser (issue 7): the live view of a running job
shows progress, throughput and an ETA from the job's metrics, follows the job to its
end, and the random-weights warning is unmissable. The job row is driven by the test
(the worker path is covered in tests/test_faces_job.py)."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from tests.fixtures_browser import login, screenshot
from viva.models import Job

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_live_view_of_a_face_indexing_job(page, live_server, users):
    job = Job.objects.create(
        kind="index_faces",
        title="Face indexing of the archive",
        queue="gpu",
        status=Job.Status.RUNNING,
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
        created_by=users["trainer"],
        device="cpu",
        progress=40,
        total=100,
        metrics={"faces/s": [[5.0, 3.5]], "images/s": [[5.0, 2.0]]},
        log_tail="Face indexing on cpu: 100 images, 100 to scan",
    )
    login(page, live_server, users["trainer"])
    page.goto(live_server.url + reverse("training:faces"))
    warning = page.locator("[data-testid=random-warning]")
    assert "recognition is meaningless" in warning.inner_text()
    stats = page.locator("[data-testid=throughput]")
    stats.get_by_text("40 of 100 images · 2.0 images/s · 3.5 faces/s").wait_for()
    assert page.locator("#run [data-field=eta]").inner_text().strip() != ""  # 60 images at 2/s
    assert page.locator("#run [data-action=cancel]").is_visible()
    screenshot(page, "faces-running")

    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.SUCCEEDED,
        progress=100,
        finished_at=timezone.now(),
        result={"summary": "Scanned 100 images in 1 chunk(s): 150 faces stored."},
    )
    page.locator("#run [data-field=summary]").get_by_text("150 faces stored").wait_for()
    assert page.locator("#run [data-field=done]").is_visible()
    assert not page.locator("#run [data-action=cancel]").is_visible()
    assert not page.viva_errors
