"""Training pages through HTTP: overview, train page and its refusals, registry,
evaluation numbers against scikit-learn (issue 4, items 1, 5, 6, 7)."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pytest
from django.urls import reverse
from django.utils import timezone
from sklearn.metrics import average_precision_score

from annotation.labels import save_labels
from annotation.models import Category
from training.dataset import dataset_overview
from training.losses import NEG, POS, WEAK
from training.models import Evaluation, ModelVersion
from training.networks import build_model, network_config
from training.registry import active_version, save_version
from training.scoring import evaluate
from training.services import JOB_KIND
from viva.models import Collection, Image, Job

pytestmark = pytest.mark.django_db


# --- helpers --------------------------------------------------------------------------------
class TableRows(HTMLParser):
    """Rows of the table with ``id``: ``[(tr attributes, [cell texts])]`` (stdlib only)."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id = table_id
        self.depth = 0  # >0 while inside the wanted table
        self.in_body = False
        self.rows: list[tuple[dict, list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and (self.depth or attrs.get("id") == self.table_id):
            self.depth += 1
        elif self.depth and tag == "tbody":
            self.in_body = True
        elif self.depth and self.in_body and tag == "tr":
            self.rows.append((attrs, []))
        elif self.depth and self.in_body and tag == "td":
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "table" and self.depth:
            self.depth -= 1
        elif tag == "tbody":
            self.in_body = False
        elif tag == "td" and self.cell is not None:
            self.rows[-1][1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def table_rows(response, table_id: str) -> list[tuple[dict, list[str]]]:
    parser = TableRows(table_id)
    parser.feed(response.content.decode())
    return parser.rows


def label_concepts(counts: dict[str, tuple[int, int, int]]) -> dict[str, Category]:
    """Concepts with (positives, negatives, neutral) labels on distinct images."""
    collection = Collection.objects.create(name="view-test")
    out = {}
    n = 0
    for name, (pos, neg, neu) in counts.items():
        concept = Category.objects.create(name=name)
        images = Image.objects.bulk_create(
            Image(
                collection=collection, file=f"v/{n + i}.jpg", sha256=f"v{n + i}", width=8, height=8
            )
            for i in range(pos + neg + neu)
        )
        n += len(images)
        values = [1] * pos + [-1] * neg + [0] * neu
        save_labels(concept, [(img.pk, v) for img, v in zip(images, values, strict=True)])
        out[name] = concept
    return out


@pytest.fixture
def models_dir(tmp_path, settings):
    settings.VIVA_MODELS_DIR = tmp_path / "models"
    return settings.VIVA_MODELS_DIR


def make_version(concepts: list[Category], seed: int) -> ModelVersion:
    """A real registry version whose evaluations the backend's scorer computed from random
    validation targets and scores (what the trainer stores after a run)."""
    rng = np.random.default_rng(seed)
    n = 60
    targets = rng.choice([POS, NEG, WEAK], size=(n, len(concepts)), p=[0.3, 0.4, 0.3])
    targets[0, :] = POS  # every concept has a validation positive
    logits = rng.normal(size=(n, len(concepts))) + 1.5 * (targets == POS)
    mean_ap, evaluations = evaluate(
        targets.astype(np.int8),
        logits.astype(np.float32),
        [c.pk for c in concepts],
        [c.name for c in concepts],
    )
    config = network_config("tiny-cnn", len(concepts))
    return (
        save_version(
            state_dict=build_model(config).state_dict(),
            config=config,
            class_map=[{"index": i, "id": c.pk, "name": c.name} for i, c in enumerate(concepts)],
            split={"seed": seed, "val_image_ids": [], "train_image_ids": [], "concepts": []},
            metrics={"mAP": mean_ap},
            evaluations=evaluations,
            train_config={"loss_preset": "C"},
            weights_source={"source": "random", "description": "random init"},
            previous=active_version("concept"),
        ),
        targets,
        logits,
    )


# --- dataset overview ----------------------------------------------------------------------
def test_overview_counts_threshold_and_totals(client_for, settings):
    settings.VIVA_TRAIN_MIN_POSITIVES = 5
    label_concepts({"bakery": (8, 6, 1), "choir": (3, 2, 0), "jeans": (12, 10, 2)})
    response = client_for("annotator").get(reverse("training:overview"))
    assert response.status_code == 200
    overview = dataset_overview()
    rows = {
        attrs["data-name"]: (attrs, cells)
        for attrs, cells in table_rows(response, "overview-table")
    }
    assert set(rows) == {"bakery", "choir", "jeans"}
    attrs, cells = rows["choir"]
    assert attrs.get("class") == "below" and cells[1:4] == ["3", "2", "0"]
    assert "needs 2 more positives" in cells[-1]
    assert rows["bakery"][0].get("class") is None
    bakery = next(c for c in overview["concepts"] if c["name"] == "bakery")
    assert rows["bakery"][1][4] == f"{bakery['train_positives']} / {bakery['train_negatives']}"
    assert rows["bakery"][1][5] == f"{bakery['val_positives']} / {bakery['val_negatives']}"
    totals = response.context["totals"]
    assert totals == overview["totals"]
    html = response.content.decode()
    assert f'data-testid="total-train">{totals["train_images"]}<' in html
    assert f'data-testid="total-val">{totals["val_images"]}<' in html
    assert response.context["chart_data"]["threshold"] == 5
    assert "overview-data" in html and "overview.js" in html


def test_overview_without_concepts(client_for):
    response = client_for("trainer").get(reverse("training:overview"))
    assert response.status_code == 200
    assert "No concepts yet" in response.content.decode()


# --- train page -----------------------------------------------------------------------------
def test_train_page_lists_devices_options_and_presets(client_for, settings):
    settings.VIVA_TRAIN_MIN_POSITIVES = 5
    label_concepts({"bakery": (8, 2, 0), "choir": (3, 0, 0)})
    response = client_for("trainer").get(reverse("training:train"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="device" value="cpu"' in html and 'class="device-name">CPU (' in html
    assert "1 of 2 concepts" in html
    for field in (
        "network",
        "init",
        "image_size",
        "batch_size",
        "epochs_phase1",
        "epochs_phase2",
        "min_positives",
    ):
        assert f'name="{field}"' in html, field
    for b in range(8):
        assert f'value="efficientnet-b{b}"' in html
    assert 'value="tiny-cnn"' in html
    # The three loss presets with their α values (Table 6.4).
    assert "α<sub>pos</sub> 0.8 · α<sub>neg</sub> 0.8 · α<sub>weak</sub> 0.2" in html
    assert "α<sub>pos</sub> 0.8 · α<sub>neg</sub> 0.1 · α<sub>weak</sub> 0.1" in html
    assert "No training run yet" in html


def test_train_page_lists_each_gpu_with_free_memory(client_for, monkeypatch):
    """Rendered as on a machine with two CUDA GPUs (one nearly full) and the CPU."""
    from training import devices

    def gpu(index: int, name: str, free_gib: float) -> dict:
        return {
            "id": f"cuda:{index}",
            "type": "cuda",
            "name": name,
            "free_bytes": int(free_gib * 2**30),
            "total_bytes": 80 * 2**30,
        }

    monkeypatch.setattr(
        devices,
        "_local_devices",
        lambda: [
            gpu(0, "NVIDIA H100 80GB HBM3", 1.5),
            gpu(1, "NVIDIA H100 80GB HBM3", 77.25),
            {
                "id": "cpu",
                "type": "cpu",
                "name": "CPU (16 cores)",
                "free_bytes": None,
                "total_bytes": None,
            },
        ],
    )
    html = client_for("trainer").get(reverse("training:train")).content.decode()
    assert html.count("GPU · NVIDIA H100 80GB HBM3") == 2
    assert "1.5 GiB GPU memory free of 80.0 GiB" in html
    assert "77.2 GiB GPU memory free of 80.0 GiB" in html
    assert "less than 3 GiB free" in html and "memory unknown" in html
    # The default choice is the first GPU with room, not the nearly full one.
    assert 'value="cuda:1" checked' in html and 'value="cuda:0" checked' not in html


def _start(client, **options):
    data = {
        "device": "cpu",
        "network": "tiny-cnn",
        "init": "random",
        "batch_size": 8,
        "epochs_phase1": 1,
        "epochs_phase2": 1,
        "loss_preset": "C",
        "min_positives": 5,
    }
    data.update(options)
    return client.post(reverse("training:train"), data)


def test_start_refused_without_concept_above_threshold(client_for):
    label_concepts({"bakery": (3, 2, 0)})
    response = _start(client_for("trainer"))
    assert response.status_code == 200
    assert "Training was not started" in response.content.decode()
    assert "No concept has at least 5 positive labels" in response.content.decode()
    assert not Job.objects.exists()


def test_start_refused_for_vanished_device(client_for):
    """The page listed a GPU that is gone when the button is pressed."""
    label_concepts({"bakery": (8, 2, 0)})
    response = _start(client_for("trainer"), device="cuda:7")
    html = response.content.decode()
    assert "Training was not started" in html
    assert "The device cuda:7 is not available (any more)" in html
    assert not Job.objects.exists()


def test_start_refused_while_device_busy(client_for, users):
    label_concepts({"bakery": (8, 2, 0)})
    busy = Job.objects.create(
        kind=JOB_KIND,
        queue="gpu",
        status=Job.Status.RUNNING,
        device="cpu",
        params={"device": "cpu"},
        heartbeat_at=timezone.now(),
        created_by=users["trainer"],
    )
    client = client_for("trainer")
    page = client.get(reverse("training:train")).content.decode()
    assert "busy with" in page and f"job #{busy.pk}" in page
    response = _start(client)
    html = response.content.decode()
    assert "Training was not started" in html and "is busy" in html
    assert list(Job.objects.all()) == [busy]


def test_start_refused_for_bad_options(client_for):
    label_concepts({"bakery": (8, 2, 0)})
    response = _start(client_for("trainer"), batch_size=0, loss_preset="Z")
    assert response.status_code == 200
    form = response.context["form"]
    assert "batch_size" in form.errors and "loss_preset" in form.errors
    assert '<details class="tr-advanced" open>' in response.content.decode()
    assert not Job.objects.exists()


def test_start_refused_without_weights_when_download_is_off(client_for, settings, tmp_path):
    label_concepts({"bakery": (8, 2, 0)})
    settings.VIVA_ALLOW_WEIGHT_DOWNLOAD = False
    settings.VIVA_WEIGHTS_DIR = tmp_path / "no-weights"
    response = _start(client_for("trainer"), network="efficientnet-b0", init="pretrained")
    assert "downloading is switched off" in response.content.decode()
    assert not Job.objects.exists()


def test_start_creates_gpu_queue_job_and_shows_it(client_for, users):
    label_concepts({"bakery": (8, 2, 0)})
    client = client_for("trainer")
    # A pretrained-only choice for a test network is corrected to random initialisation.
    response = _start(client, init="pretrained", image_size=48)
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('training:train')}?job={job.pk}"
    assert (job.kind, job.queue, job.status, job.device) == (JOB_KIND, "gpu", "queued", "cpu")
    assert job.created_by == users["trainer"]
    assert {
        k: job.params[k]
        for k in ("network", "init", "image_size", "batch_size", "min_positives", "loss_preset")
    } == {
        "network": "tiny-cnn",
        "init": "random",
        "image_size": 48,
        "batch_size": 8,
        "min_positives": 5,
        "loss_preset": "C",
    }
    page = client.get(response["Location"]).content.decode()
    assert "Training started on cpu" in page
    assert reverse("jobs:status", args=[job.pk]) in page
    assert 'id="chart-loss"' in page and 'id="chart-map"' in page
    assert 'id="chart-lr"' in page and 'id="chart-usage"' in page
    assert reverse("jobs:cancel", args=[job.pk]) in page


def test_failed_run_says_why(client_for, users):
    job = Job.objects.create(
        kind=JOB_KIND,
        queue="gpu",
        status=Job.Status.FAILED,
        created_by=users["trainer"],
        error="The cuda:0 ran out of memory with batch size 64 at 300 px. Start again with "
        "a smaller batch size (e.g. 32).",
        log_tail="12:00:00 Epoch 1 …",
        params={"network": "efficientnet-b3"},
    )
    html = client_for("trainer").get(reverse("training:train")).content.decode()
    assert "The run failed." in html and "smaller batch size (e.g. 32)" in html
    assert f"?job={job.pk}" in html
    assert client_for("trainer").get(reverse("training:train") + "?job=999").status_code == 404
    assert client_for("trainer").get(reverse("training:train") + "?job=x").status_code == 404


def test_train_page_query_count(client_for, users, django_assert_max_num_queries):
    label_concepts({"bakery": (8, 2, 0)})
    for _ in range(5):
        Job.objects.create(
            kind=JOB_KIND, queue="gpu", status=Job.Status.SUCCEEDED, created_by=users["trainer"]
        )
    client = client_for("trainer")
    with django_assert_max_num_queries(20):
        assert client.get(reverse("training:train")).status_code == 200


# --- registry ------------------------------------------------------------------------------------
def test_models_page_and_activation(client_for, models_dir):
    concepts = [Category.objects.create(name=n) for n in ("bakery", "choir")]
    v1, *_ = make_version(concepts, 1)
    v2, *_ = make_version(concepts, 2)
    client = client_for("trainer")
    html = client.get(reverse("training:models")).content.decode()
    assert "v1" in html and "v2" in html and 'data-testid="active-badge"' in html
    assert reverse("training:activate", args=[v1.pk]) in html
    assert reverse("training:activate", args=[v2.pk]) not in html  # already active
    assert f"{100 * v1.mean_ap:.1f} %" in html and "random init" in html

    response = client.post(reverse("training:activate", args=[v1.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("training:models")
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert v1.is_active and not v2.is_active
    html = client.get(reverse("training:models")).content.decode()
    assert "v1 is now the active concept model" in html


def test_activation_of_version_without_files_is_refused(client_for, models_dir):
    concepts = [Category.objects.create(name="bakery")]
    v1, *_ = make_version(concepts, 1)
    v2, *_ = make_version(concepts, 2)
    (models_dir / v1.weights_path).unlink()
    client = client_for("trainer")
    response = client.post(reverse("training:activate", args=[v1.pk]), follow=True)
    assert "files of Concepts v1 are missing" in response.content.decode()
    assert active_version() == v2
    assert client.post(reverse("training:activate", args=[9999])).status_code == 404


def test_activation_needs_trainer(client_for, models_dir):
    concepts = [Category.objects.create(name="bakery")]
    v1, *_ = make_version(concepts, 1)
    make_version(concepts, 2)
    assert (
        client_for("annotator").post(reverse("training:activate", args=[v1.pk])).status_code == 403
    )
    v1.refresh_from_db()
    assert not v1.is_active


# --- evaluation -----------------------------------------------------------------------------------
def test_evaluation_numbers_equal_database_and_sklearn(client_for, models_dir):
    concepts = [Category.objects.create(name=n) for n in ("bakery", "choir", "jeans")]
    old, *_ = make_version(concepts[:2], 7)
    new, targets, logits = make_version(concepts, 8)
    response = client_for("trainer").get(reverse("training:evaluation"))
    assert response.status_code == 200
    assert response.context["version"] == new and response.context["baseline"] == old
    rows = {
        attrs["data-name"]: (attrs, cells) for attrs, cells in table_rows(response, "eval-table")
    }
    assert set(rows) == {"bakery", "choir", "jeans"}
    for k, concept in enumerate(concepts):
        e = Evaluation.objects.get(model_version=new, category_name=concept.name)
        # The stored AP is scikit-learn's, over positives vs labelled and weak negatives.
        t = targets[:, k]
        mask = np.isin(t, (POS, NEG, WEAK))
        assert e.ap == pytest.approx(average_precision_score(t[mask] == POS, logits[mask, k]))
        attrs, cells = rows[concept.name]
        assert float(attrs["data-ap"]) == pytest.approx(e.ap, abs=1e-12)
        assert cells[1] == f"{100 * e.ap:.1f}"
        before = Evaluation.objects.filter(model_version=old, category_name=concept.name).first()
        if before is None:
            assert cells[2] == "—" and cells[3] == "—" and attrs["data-previous"] == ""
        else:
            assert cells[2] == f"{100 * before.ap:.1f}"
            diff = f"{100 * (e.ap - before.ap):+.1f}"
            assert cells[3] == (diff if diff not in ("+0.0", "-0.0") else "±0.0")
            assert float(attrs["data-diff"]) == pytest.approx(e.ap - before.ap)
    html = response.content.decode()
    assert f'data-testid="mean-ap">{100 * new.mean_ap:.1f} %<' in html
    assert f'data-testid="previous-mean-ap">{100 * old.mean_ap:.1f} %<' in html
    assert new.mean_ap == pytest.approx(
        np.mean([e.ap for e in Evaluation.objects.filter(model_version=new)])
    )
    curves = response.context["chart_data"]["curves"]
    stored = Evaluation.objects.get(model_version=new, category_name="choir").pr_curve
    assert curves["choir"]["new"] == stored and curves["jeans"]["old"] is None
    assert "Activate v" not in html  # the newest is active already


def test_evaluation_of_an_older_version_and_other_baseline(client_for, models_dir):
    concepts = [Category.objects.create(name="bakery")]
    v1, *_ = make_version(concepts, 1)
    make_version(concepts, 2)
    v3, *_ = make_version(concepts, 3)
    client = client_for("trainer")
    response = client.get(reverse("training:evaluation") + "?version=1")
    assert response.context["version"] == v1 and response.context["baseline"] is None
    html = response.content.decode()
    assert "Activate v1" in html
    response = client.get(reverse("training:evaluation") + "?version=3&baseline=1")
    assert response.context["baseline"] == v1
    for bad in ("?version=99", "?version=x", "?version=3&baseline=3", "?baseline=42"):
        assert client.get(reverse("training:evaluation") + bad).status_code == 404, bad
    assert v3.is_active


def test_evaluation_without_versions(client_for):
    html = client_for("trainer").get(reverse("training:evaluation")).content.decode()
    assert "No concept model has been trained yet" in html


def test_models_page_lists_person_versions_separately(client_for, models_dir):
    concepts = [Category.objects.create(name="bakery")]
    make_version(concepts, 1)
    person = ModelVersion.objects.create(
        kind=ModelVersion.Kind.PERSON,
        version=7,
        directory="person/7",
        weights_path="person/7/svm.joblib",
        class_map=[{"index": 0, "id": 1, "name": "Ada"}],
        mean_ap=0.9,
    )
    client = client_for("trainer")
    html = client.get(reverse("training:models")).content.decode()
    assert 'data-version="7"' not in html and 'data-version="1"' in html
    html = client.get(reverse("training:models") + "?kind=person").content.decode()
    assert 'data-version="7"' in html and 'data-version="1"' not in html
    assert "the person model" in html
    assert reverse("training:activate", args=[person.pk]) in html
