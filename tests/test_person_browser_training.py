"""In a real browser: a trainer sees which persons have enough faces, trains persons with
one click, watches the run finish, sees per-person AP and the rejection threshold, and
opens the evaluation page of the person version (issue 7, item 3).

The job runs in the test process (``run_job``) right after the click instead of on a
Celery worker: the page cannot tell the difference (it polls the job row), and the SVM
needs no worker-side setup."""

from __future__ import annotations

import pytest
from django.urls import reverse

from annotation.models import Category
from tests.conftest import make_user
from tests.fixtures_browser import login, screenshot
from tests.person_data import make_world
from training.models import ModelVersion
from viva.jobs.runner import run_job
from viva.models import Job
from viva.models.users import Role

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_train_persons_and_see_the_evaluation(page, live_server, settings, tmp_path):
    settings.VIVA_MODELS_DIR = tmp_path / "models"
    settings.VIVA_PERSON_MIN_FACES = 10
    make_world({"Ada": 14, "Bert": 12, "Cleo": 11}, unknown_labelled=20)
    Category.objects.create(name="Dora", kind=Category.Kind.PERSON)
    trainer = make_user("tom", Role.TRAINER)
    login(page, live_server, trainer)

    page.goto(live_server.url + reverse("training:persons"))
    assert "3 persons" in page.get_by_test_id("eligible").inner_text()
    table = page.get_by_test_id("person-table")
    assert "needs 10 more" in table.text_content()  # Dora, in the closed fold
    assert page.get_by_test_id("no-person-model").is_visible()
    assert page.get_by_test_id("embedder-warning").is_visible()  # random embeddings

    page.get_by_test_id("train-persons").click()
    page.wait_for_url("**/train/persons/?job=*")
    job = Job.objects.get(kind="train_persons")
    assert f"job {job.pk}" in page.locator(".messages").inner_text()
    assert run_job(job.pk) == "succeeded"

    # The live view sees the run finish and shows the result.
    page.wait_for_selector("[data-testid=person-ap]", timeout=30000)
    page.wait_for_function(
        "() => { const c = Chart.getChart(document.getElementById('chart-folds'));"
        " return c && c.data.datasets[0].data.length === 5; }"
    )
    version = ModelVersion.objects.get(kind="person")
    text = page.get_by_test_id("person-ap").inner_text()
    for e in version.evaluations.all():
        assert e.category_name in text and f"{100 * e.ap:.1f}" in text
    assert f"{100 * version.mean_ap:.1f} %" in page.get_by_test_id("person-map").inner_text()
    assert "unknown faces rejected" in page.get_by_test_id("rates").inner_text()
    screenshot(page, "persons-trained", full_page=True)

    # The slider shows what another threshold does before it is saved.
    page.get_by_test_id("threshold").fill("0")
    page.get_by_test_id("threshold").dispatch_event("input")
    assert "unknown faces rejected 0.0 %" in page.get_by_test_id("rates").inner_text()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#threshold-form button[type=submit]").click()
    page.wait_for_selector(".messages")
    version.refresh_from_db()
    assert version.config["threshold"] == 0.0

    page.get_by_test_id("person-evaluation-link").click()
    page.wait_for_url("**/train/evaluation/?kind=person*")
    assert page.get_by_test_id("person-note").is_visible()
    assert f"{100 * version.mean_ap:.1f}" in page.get_by_test_id("mean-ap").inner_text()
    screenshot(page, "persons-evaluation", full_page=True)


def _write_pictures(faces, media_root) -> None:
    """Small pictures for the crops and keyframes, so the grid shows images."""
    from PIL import Image as Picture

    for i, face in enumerate(faces):
        for rel, size, colour in (
            (face.thumbnail, (48, 48), (200, 120 + i * 5 % 100, 90)),
            (face.image.thumbnail, (64, 48), (60, 90, 140)),
            (face.image.file, (64, 48), (60, 90, 140)),
        ):
            path = media_root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Picture.new("RGB", size, colour).save(path, "JPEG")


def test_person_results_show_faces_and_feedback_labels_the_face(
    page, live_server, settings, tmp_path
):
    from pathlib import Path

    from annotation.models import Annotation
    from retrieval.persons.inference import start_person_inference
    from tests.test_person_training import FakeContext
    from training.persons.service import train_persons

    settings.VIVA_MODELS_DIR = tmp_path / "models"
    world = make_world({"Ada": 12, "Bert": 12}, unlabelled_each=4, unknown_labelled=15)
    train_persons(FakeContext({"min_faces": 10}))
    annotator = make_user("anna", Role.ANNOTATOR)
    job = start_person_inference(None)
    assert run_job(job.pk) == "succeeded"
    ada = world.persons["Ada"]
    _write_pictures(world.labelled["Ada"] + world.unlabelled["Ada"], Path(settings.MEDIA_ROOT))

    login(page, live_server, annotator)
    page.goto(live_server.url + reverse("annotation:categories") + "?kind=person")
    page.click(f"tr[data-category='{ada.pk}'] button:has-text('Select')")
    page.goto(live_server.url + reverse("retrieval:ranked"))
    page.wait_for_selector("#vgrid.ready")
    assert page.get_by_test_id("person-note").is_visible()
    keys = page.eval_on_selector_all(".vcell", "cells => cells.map(c => c.dataset.key)")
    ada_faces = {str(f.pk) for f in world.labelled["Ada"] + world.unlabelled["Ada"]}
    assert keys and set(keys) <= ada_faces  # cells are Ada's recognised faces
    thumbs = page.eval_on_selector_all(".vcell img", "imgs => imgs.map(i => i.src)")
    assert any("/faces/" in src for src in thumbs)
    screenshot(page, "persons-ranked")

    page.keyboard.press("2")  # the cursor face is not Ada
    with page.expect_request("**/persons/feedback/") as request_info:
        page.click("button.vgrid-save")
    assert "feedback" in request_info.value.post_data
    page.wait_for_selector(".vgrid-dirty:has-text('All saved')")
    label = Annotation.objects.get(category=ada, face_id=int(keys[0]))
    assert (label.value, label.source) == (-1, "feedback")
