"""The researcher's loop in a real browser with a real Celery worker (issue 5, "Tests"):
run inference with the active model, watch it finish, browse the ranked keyframes of a
concept, give feedback, export the concept's segments and download the zip.

The model is a tiny-cnn trained inline on synthetic shapes (seconds); the keyframes are
shape pictures of one video (``tests.test_inference.make_keyframes``). Screenshots:
var/test/screens/loop-*.png.
"""

from __future__ import annotations

import io
import time
import zipfile

import pytest
from django.urls import reverse

from annotation.models import Annotation, AnnotationEvent
from retrieval.models import InferenceRun, Prediction
from tests.fixtures_browser import login, screenshot
from tests.test_inference import make_keyframes
from training.registry import active_version
from training.synthetic import make_shapes_archive
from training.trainer import NullContext, train
from viva.models import Job, Profile

pytestmark = [
    pytest.mark.browser,
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

FAST = {
    "network": "tiny-cnn",
    "image_size": 64,
    "init": "random",
    "device": "cpu",
    "batch_size": 16,
    "epochs_phase1": 8,
    "epochs_phase2": 2,
    "min_positives": 20,
    "num_workers": 0,
    "cpu_threads": 1,
    "seed": 1,
}
KEYFRAMES = 24
JOB_TIMEOUT_MS = 60_000


@pytest.fixture
def loop_env(monkeypatch, settings, tmp_path):
    """Shared by the web process and the worker: a private models folder and no DataLoader
    child processes (see test_browser_training.py)."""
    models = tmp_path / "models"
    for name, value in (
        ("VIVA_TRAIN_MIN_POSITIVES", "20"),
        ("VIVA_TRAIN_NUM_WORKERS", "0"),
        ("VIVA_MODELS_DIR", str(models)),
    ):
        monkeypatch.setenv(name, value)
    settings.VIVA_TRAIN_MIN_POSITIVES = 20
    settings.VIVA_TRAIN_NUM_WORKERS = 0
    settings.VIVA_MODELS_DIR = models
    return models


@pytest.fixture
def celery_worker(loop_env, celery_worker):
    """conftest's real worker, started after ``loop_env`` so it inherits it."""
    return celery_worker


def test_infer_browse_feedback_export(page, live_server, users, celery_worker):
    started = time.monotonic()
    archive = make_shapes_archive(30, seed=3)
    train(NullContext(), FAST)
    version = active_version()
    assert version is not None
    frames = make_keyframes(KEYFRAMES, name="Loop archive", seed=7)
    circle = archive["categories"]["red circle"]
    trainer = users["trainer"]  # trainers may run inference, annotate and export
    Profile.objects.filter(user=trainer).update(grid_rows=2, grid_cols=4)
    login(page, live_server, trainer)

    # --- inference: start it on the CPU, watch the progress bar reach 100 % ------------
    page.goto(live_server.url + reverse("training:inference"))
    assert f"v{version.version}" in page.inner_text("[data-testid=model]")
    page.check("input[name=device][value=cpu]")
    page.locator("details.tr-advanced summary").click()
    page.fill("input[name=chunk_size]", "8")
    page.click("[data-testid=start]")
    page.wait_for_selector("#run")
    screenshot(page, "loop-inference-running")
    page.wait_for_selector("#run [data-field=done]:not([hidden])", timeout=JOB_TIMEOUT_MS)
    assert page.locator("#run [data-field=status]").inner_text().lower() in {"succeeded", "done"}
    bar = page.locator("#run .run-progress [role=progressbar]")
    page.wait_for_function(
        "() => document.querySelector('#run .run-progress [role=progressbar]')"
        ".getAttribute('aria-valuenow') === '100'"
    )
    assert bar.get_attribute("aria-valuenow") == "100"
    screenshot(page, "loop-inference-done")
    # Opened again, the page says which run retrieval shows now.
    page.reload()
    assert "Retrieval shows" in page.inner_text("[data-testid=keyframes]")
    run = InferenceRun.objects.get()
    assert run.is_published and run.n_scored == KEYFRAMES
    assert Prediction.objects.filter(run=run, category=circle).exists()

    # --- retrieval: the ranked keyframes of "red circle", with scores ------------------
    page.goto(live_server.url + reverse("annotation:categories"))
    page.click(f"tr[data-category='{circle.pk}'] button:has-text('Select')")
    page.goto(live_server.url + reverse("retrieval:ranked"))
    page.wait_for_selector("#vgrid.ready")
    scores = page.eval_on_selector_all(".vcell-extra", "els => els.map(e => e.textContent)")
    assert len(scores) == 8 and all(s.startswith("score ") for s in scores), scores
    values = [float(s.split()[1]) for s in scores]
    assert values == sorted(values, reverse=True)
    keys = page.eval_on_selector_all(".vcell", "cells => cells.map(c => c.dataset.key)")
    by_pk = {str(f.pk): f for f in frames}
    assert set(keys) <= set(by_pk)
    # The trained model puts circles first.
    assert "red circle" in by_pk[keys[0]].shown, [by_pk[k].shown for k in keys]
    screenshot(page, "loop-ranked")

    # --- feedback: the top hit is marked negative (key 2 on the cursor cell), saved ----
    page.keyboard.press("2")
    with page.expect_request("**/labels/save/") as request_info:
        page.click("button.vgrid-save")
    assert "feedback" in request_info.value.post_data
    page.wait_for_selector(".vgrid-dirty:has-text('All saved')")
    screenshot(page, "loop-feedback-saved")
    ann = Annotation.objects.get(category=circle, image_id=int(keys[0]), face__isnull=True)
    assert (ann.value, ann.source) == (-1, "feedback")
    assert AnnotationEvent.objects.filter(image_id=int(keys[0]), source="feedback").exists()

    # --- export: the segments of "red circle", a job on the worker, the zip -----------
    page.goto(live_server.url + reverse("retrieval:export"))
    page.wait_for_selector("[data-testid=segments-form]")
    page.select_option("[data-testid=segments-form] select[name=category]", str(circle.pk))
    page.fill("[data-testid=segments-form] input[name=threshold]", "50")
    page.click("[data-testid=segments-form] button[type=submit]")
    page.wait_for_url("**/jobs/*/")
    job = Job.objects.filter(kind="export_segments").get()
    # The job page polls its status until the worker is done.
    page.wait_for_selector(
        "[data-field=status].succeeded, [data-field=status].failed", timeout=JOB_TIMEOUT_MS
    )
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error + "\n" + job.log_tail
    screenshot(page, "loop-export-job")
    page.goto(live_server.url + reverse("retrieval:export"))
    link = page.locator(f"a[href='{reverse('retrieval:download', args=[job.pk])}']")
    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    assert download.suggested_filename.endswith(".zip")
    with zipfile.ZipFile(io.BytesIO(open(download.path(), "rb").read())) as zf:
        names = zf.namelist()
        assert "segments.csv" in names, names
        csv_text = zf.read("segments.csv").decode()
    assert "red circle" in csv_text
    screenshot(page, "loop-export")
    assert not page.viva_errors, page.viva_errors
    print(f"\nloop test body: {time.monotonic() - started:.1f} s")
