"""In a real browser with a real Celery worker: look at the dataset, start a training run
with one click (a tiny network through the advanced fold), watch the progress bar and the
curves move, then find the new version on the evaluation page (issue 4)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from django.urls import reverse

from tests.conftest import make_user
from tests.fixtures_browser import login, screenshot
from training.losses import NEG, POS, WEAK
from training.models import Evaluation, ModelVersion
from training.networks import build_model, network_config
from training.registry import save_version
from training.scoring import evaluate
from training.synthetic import make_shapes_archive
from viva.models import Job
from viva.models.users import Role

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

THRESHOLD = 20
RUN_TIMEOUT_S = 240


@pytest.fixture
def training_env(monkeypatch, settings, tmp_path):
    """What the worker must share with the web process: the threshold, a private models
    folder, and no DataLoader child processes (two cores: the browser, the server and
    the worker already compete for them)."""
    models = tmp_path / "models"
    for name, value in (
        ("VIVA_TRAIN_MIN_POSITIVES", str(THRESHOLD)),
        ("VIVA_TRAIN_NUM_WORKERS", "0"),
        ("VIVA_MODELS_DIR", str(models)),
    ):
        monkeypatch.setenv(name, value)
    settings.VIVA_TRAIN_MIN_POSITIVES = THRESHOLD
    settings.VIVA_TRAIN_NUM_WORKERS = 0
    settings.VIVA_MODELS_DIR = models
    return models


@pytest.fixture
def celery_worker(training_env, celery_worker):
    """conftest's real worker, started after ``training_env`` so it inherits it."""
    return celery_worker


def previous_version(categories: list) -> ModelVersion:
    """An untrained "v1" so the evaluation page has something to compare with."""
    rng = np.random.default_rng(3)
    targets = rng.choice([POS, NEG, WEAK], size=(40, len(categories))).astype(np.int8)
    targets[0] = POS
    logits = rng.normal(size=targets.shape).astype(np.float32)
    mean_ap, evaluations = evaluate(
        targets, logits, [c.pk for c in categories], [c.name for c in categories]
    )
    config = network_config("tiny-cnn", len(categories))
    return save_version(
        state_dict=build_model(config).state_dict(),
        config=config,
        class_map=[{"index": i, "id": c.pk, "name": c.name} for i, c in enumerate(categories)],
        split={"seed": 1, "val_image_ids": [], "train_image_ids": [], "concepts": []},
        metrics={"mAP": mean_ap},
        evaluations=evaluations,
        weights_source={"source": "random", "description": "random initialisation"},
    )


def chart_points(page, canvas_id: str, dataset: int = 0) -> int:
    return page.evaluate(
        """([id, i]) => { const c = Chart.getChart(document.getElementById(id));
                          return c && c.data.datasets[i] ? c.data.datasets[i].data.length : 0; }""",
        [canvas_id, dataset],
    )


def progress_percent(page) -> float:
    return float(
        page.locator("#run .run-progress [role=progressbar]").get_attribute("aria-valuenow") or 0
    )


@pytest.mark.worker
@pytest.mark.slow
def test_start_watch_and_evaluate_a_run(page, live_server, celery_worker):
    archive = make_shapes_archive(40, seed=5, size=(96, 72))
    categories = list(archive["categories"].values())
    v1 = previous_version(categories)
    trainer = make_user("tessa", Role.TRAINER)
    login(page, live_server, trainer)

    # --- dataset overview: three concepts above the line, one below -------------------
    from annotation.labels import save_labels
    from annotation.models import Category

    rare = Category.objects.create(name="yellow star")
    save_labels(rare, [(img.pk, 1) for img, _ in archive["images"][:7]])
    page.goto(live_server.url + reverse("training:overview"))
    page.wait_for_function("() => Chart.getChart(document.getElementById('overview-chart'))")
    rows = page.locator("#overview-table tbody tr")
    assert rows.count() == 4
    assert page.locator("#overview-table tr.below").count() == 1
    assert "needs 13 more positives" in page.locator("#overview-table tr.below").inner_text()
    threshold = page.evaluate(
        "() => Chart.getChart(document.getElementById('overview-chart'))"
        ".options.plugins.thresholdLine.value"
    )
    assert threshold == THRESHOLD
    page.select_option("#overview-sort", "name")
    names = page.locator("#overview-table tbody tr td:first-child").all_inner_texts()
    assert names == sorted(names, key=str.lower)
    labels = page.evaluate(
        "() => Chart.getChart(document.getElementById('overview-chart')).data.labels"
    )
    assert labels == names
    page.select_option("#overview-sort", "positives")
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "training-overview")

    # --- the train page: start through the advanced fold ------------------------------------
    page.goto(live_server.url + reverse("training:train"))
    assert "3 of 4 concepts" in page.locator(".tr-summary").inner_text()
    assert page.locator("input[name=device][value=cpu]").is_checked()
    screenshot(page, "training-start")
    page.locator(".tr-advanced > summary").click()
    page.select_option("select[name=network]", "tiny-cnn")
    assert page.locator("select[name=init]").input_value() == "random"
    page.fill("input[name=batch_size]", "16")
    page.fill("input[name=epochs_phase1]", "8")
    page.fill("input[name=epochs_phase2]", "8")
    assert page.locator("input[name=min_positives]").input_value() == str(THRESHOLD)
    screenshot(page, "training-advanced", full_page=True)
    page.get_by_test_id("start").click()
    page.wait_for_url("**/train/concepts/?job=*")
    job = Job.objects.get(kind="train_concepts")
    assert job.params["network"] == "tiny-cnn" and job.params["init"] == "random"
    assert f"Training started on cpu (job {job.pk})" in page.locator(".messages").inner_text()

    # --- live: the progress bar and the curves move ---------------------------------------
    page.wait_for_function(
        "() => Chart.getChart(document.getElementById('chart-loss'))"
        ".data.datasets[0].data.length > 0",
        timeout=RUN_TIMEOUT_S * 1000,
    )
    first_points, first_progress = chart_points(page, "chart-loss"), progress_percent(page)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    grown = False
    shot_live = False
    while time.monotonic() < deadline:
        points = chart_points(page, "chart-loss")
        status = page.locator("#run [data-field=status]").inner_text()
        if points > first_points and progress_percent(page) > first_progress:
            grown = True
            if not shot_live and chart_points(page, "chart-map") >= 2:
                screenshot(page, "training-live", full_page=True)
                shot_live = True
        if status in ("Succeeded", "Failed", "Cancelled"):
            break
        page.wait_for_timeout(300)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, (
        f"{job.status}: {job.error}\n{job.log_tail}\n{celery_worker.output()[-3000:]}"
    )
    assert grown, "the loss curve and the progress bar never moved while the run was active"
    page.wait_for_function(
        "() => document.querySelector('#run [data-field=status]').textContent === 'Succeeded'"
    )
    assert progress_percent(page) == 100
    assert chart_points(page, "chart-map") >= 2 and chart_points(page, "chart-lr") >= 2
    assert chart_points(page, "chart-loss", 1) >= 2  # validation loss per epoch
    assert chart_points(page, "chart-usage") >= 1  # CPU use sampled during the run
    assert "Epoch 1" in page.locator("#run [data-field=log]").inner_text()
    assert not page.locator("#run [data-field=done]").is_hidden()
    if not shot_live:
        screenshot(page, "training-live", full_page=True)
    page.locator("#run").scroll_into_view_if_needed()
    screenshot(page, "training-done")

    # --- evaluation: the new version beside v1 -----------------------------------------------
    v2 = ModelVersion.objects.exclude(pk=v1.pk).get()
    assert v2.is_active and v2.mean_ap >= 0.9, v2.metrics
    page.locator("#run [data-field=evaluation-link]").click()
    page.wait_for_url(f"**/train/evaluation/?version={v2.version}")
    assert page.get_by_test_id("mean-ap").inner_text() == f"{100 * v2.mean_ap:.1f} %"
    assert page.get_by_test_id("previous-mean-ap").inner_text() == f"{100 * v1.mean_ap:.1f} %"
    for e in Evaluation.objects.filter(model_version=v2):
        row = page.locator(f"#eval-table tr[data-name='{e.category_name}']")
        assert row.locator("[data-field=ap]").inner_text() == f"{100 * e.ap:.1f}"
    page.locator("#eval-table th[data-sort=diff]").click()
    diffs = [
        float(x)
        for x in page.locator("#eval-table tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.diff)"
        )
    ]
    assert diffs == sorted(diffs, reverse=True)
    page.locator("#eval-table tbody tr", has_text="blue square").click()
    assert page.locator("#pr-title").inner_text() == "blue square"
    assert chart_points(page, "pr-chart") >= 2 and chart_points(page, "pr-chart", 1) >= 2
    screenshot(page, "training-evaluation")

    # --- registry: roll back to v1 ---------------------------------------------------------------
    page.goto(live_server.url + reverse("training:models"))
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f"tr[data-version='{v1.version}'] button", has_text="Activate").click()
    page.wait_for_load_state()
    assert "v1 is now the active concept model" in page.locator(".messages").inner_text()
    v1.refresh_from_db()
    assert v1.is_active
    screenshot(page, "training-models")
    assert page.viva_errors == [], page.viva_errors


@pytest.fixture
def many_concepts(settings, tmp_path):
    """30 concepts with very different label counts and two registry versions, as after
    a few months of labelling (no worker: the rows are written directly)."""
    from django.utils import timezone

    from annotation.models import Annotation, Category
    from viva.models import Collection, Image

    settings.VIVA_MODELS_DIR = tmp_path / "models"
    settings.VIVA_TRAIN_MIN_POSITIVES = 100
    rng = np.random.default_rng(11)
    collection = Collection.objects.create(name="many")
    images = Image.objects.bulk_create(
        Image(collection=collection, file=f"m/{i}.jpg", sha256=f"m{i}", width=8, height=8)
        for i in range(400)
    )
    names = [
        "bakery (inside)",
        "Brandenburg Gate",
        "jeans",
        "choir",
        "tractor",
        "harbour",
        "parade",
        "kindergarten",
        "television studio",
        "steel works",
        "football",
        "ballet",
        "railway station",
        "lecture hall",
        "swimming pool",
        "portrait",
        "wedding",
        "demonstration",
        "car factory",
        "forest",
        "beach",
        "snow",
        "night",
        "crowd",
        "newsreader",
        "map",
        "orchestra",
        "ship",
        "aircraft",
        "library",
    ]
    categories, now, rows = [], timezone.now(), []
    for k, name in enumerate(names):
        c = Category.objects.create(name=name)
        categories.append(c)
        n_pos = int(rng.integers(20, 220)) if k % 4 else int(rng.integers(5, 90))
        chosen = rng.permutation(len(images))
        values = (
            [1] * min(n_pos, 300)
            + [-1] * int(rng.integers(10, 90))
            + [0] * int(rng.integers(0, 10))
        )
        rows += [
            Annotation(image=images[int(i)], category=c, value=v, updated_at=now)
            for i, v in zip(chosen, values, strict=False)
        ]
    Annotation.objects.bulk_create(rows)
    trained = categories[:24]
    v1 = _version_with_aps(trained[:20], rng, 0.55)
    v2 = _version_with_aps(trained, rng, 0.7)
    return {"categories": categories, "v1": v1, "v2": v2}


def _version_with_aps(categories, rng, level: float) -> ModelVersion:
    """A version whose per-concept scores are noisy around ``level`` of separation."""
    n = 80
    targets = rng.choice([POS, NEG, WEAK], size=(n, len(categories)), p=[0.3, 0.3, 0.4])
    targets[0] = POS
    strength = rng.uniform(level, level + 2.5, size=len(categories))
    logits = rng.normal(size=targets.shape) + strength * (targets == POS)
    mean_ap, evaluations = evaluate(
        targets.astype(np.int8),
        logits.astype(np.float32),
        [c.pk for c in categories],
        [c.name for c in categories],
    )
    config = network_config("tiny-cnn", len(categories))
    from training.registry import active_version

    return save_version(
        state_dict=build_model(config).state_dict(),
        config=config,
        class_map=[{"index": i, "id": c.pk, "name": c.name} for i, c in enumerate(categories)],
        split={"seed": 1, "val_image_ids": [], "train_image_ids": [], "concepts": []},
        metrics={"mAP": mean_ap},
        evaluations=evaluations,
        train_config={"loss_preset": "C"},
        weights_source={
            "source": "file",
            "description": "ImageNet weights efficientnet-b3 "
            "from var/weights/efficientnet-b3.pth (local file)",
        },
        previous=active_version("concept"),
    )


def test_many_concepts_overview_and_evaluation(page, live_server, many_concepts):
    """Horizontal bars when there are many concepts; sorting moves chart and table."""
    trainer = make_user("theo", Role.TRAINER)
    login(page, live_server, trainer)
    page.goto(live_server.url + reverse("training:overview"))
    page.wait_for_function("() => Chart.getChart(document.getElementById('overview-chart'))")
    chart = "Chart.getChart(document.getElementById('overview-chart'))"
    assert page.evaluate(f"() => {chart}.options.indexAxis") == "y"
    below = page.locator("#overview-table tr.below").count()
    assert below == sum(
        1
        for row in page.locator("#overview-table tbody tr").evaluate_all(
            "rows => rows.map(r => +r.dataset.positives)"
        )
        if row < 100
    )
    page.locator("#overview-table th[data-sort=negatives]").click()
    negatives = page.evaluate(f"() => {chart}.data.datasets[1].data")
    assert negatives == sorted(negatives, reverse=True)
    page.select_option("#overview-sort", "positives")
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "training-overview-many")

    v2 = many_concepts["v2"]
    page.goto(live_server.url + reverse("training:evaluation"))
    assert page.locator("#eval-table tbody tr").count() == 24
    chart = "Chart.getChart(document.getElementById('eval-chart'))"
    assert page.evaluate(f"() => {chart}.options.indexAxis") == "y"
    assert page.get_by_test_id("mean-ap").inner_text() == f"{100 * v2.mean_ap:.1f} %"
    page.locator("#eval-table th[data-sort=name]").click()
    labels = page.evaluate(f"() => {chart}.data.labels")
    assert labels == sorted(labels, key=str.lower)
    page.locator("#eval-table th[data-sort=diff]").click()
    # Concepts the previous version did not know have no difference: listed last.
    diffs = page.locator("#eval-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.diff)"
    )
    known = [float(d) for d in diffs if d]
    assert known == sorted(known, reverse=True) and diffs[-4:] == ["", "", "", ""]
    page.locator("#eval-table tbody tr", has_text="Brandenburg Gate").click()
    assert page.locator("#pr-title").inner_text() == "Brandenburg Gate"
    screenshot(page, "training-evaluation-many")
    page.goto(live_server.url + reverse("training:models"))
    screenshot(page, "training-models-many")
    assert page.viva_errors == [], page.viva_errors


def test_cancel_asks_first_and_stops_the_run(page, live_server, settings, tmp_path):
    """No worker: a queued run is cancelled at once, which is enough to check the page's
    confirmation, the request it sends and what it shows afterwards."""
    settings.VIVA_MODELS_DIR = tmp_path / "models"
    trainer = make_user("cleo", Role.TRAINER)
    job = Job.objects.create(
        kind="train_concepts",
        title="Concept training on cpu",
        queue="gpu",
        device="cpu",
        created_by=trainer,
        params={"network": "efficientnet-b3", "device": "cpu"},
    )
    login(page, live_server, trainer)
    page.goto(live_server.url + reverse("training:train"))
    run = page.locator("#run")
    assert run.locator("[data-field=status]").inner_text() == "Queued"
    # The run comes first while it is active (order: -1 in the stacked layout).
    assert page.evaluate(
        "() => document.getElementById('run').getBoundingClientRect().top"
        " < document.querySelector('.tr-start').getBoundingClientRect().top"
    )
    page.once("dialog", lambda dialog: dialog.dismiss())
    run.get_by_role("button", name="Cancel run").click()
    page.wait_for_timeout(500)
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED
    page.once("dialog", lambda dialog: dialog.accept())
    run.get_by_role("button", name="Cancel run").click()
    page.wait_for_function(
        "() => document.querySelector('#run [data-field=status]').textContent === 'Cancelled'"
    )
    assert page.url.endswith(reverse("training:train"))  # stayed on the page
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert run.locator("[data-field=cancelled]").is_visible()
    assert not run.get_by_role("button", name="Cancel run").is_visible()
    assert not run.locator("[data-field=failed]").is_visible()
    assert not run.locator("[data-field=done]").is_visible()
    assert page.viva_errors == [], page.viva_errors
