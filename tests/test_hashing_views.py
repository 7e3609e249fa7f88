"""The "Hash codes" page: what it shows, starting jobs, refusals, activation."""

from __future__ import annotations

import pytest
from django.urls import reverse

from annotation.labels import save_labels
from annotation.models import Category
from retrieval.hashing import service
from training.models import ModelVersion
from viva.models import Job

URL = "/retrieve/hashing/"


def version(number: int, *, method="itq", active=False, source="file", perm=True, mean_ap=None):
    config = {"method": method, "bits": 256, "network": {"name": "efficientnet-b3"}}
    if perm:
        config["permutation"] = list(range(256))
    return ModelVersion.objects.create(
        kind="hashing",
        version=number,
        directory=f"hashing/{number}",
        weights_path=f"hashing/{number}/weights.pt",
        config=config,
        metrics={"chance_map": 0.25} if method == "deep" else {"sample_images": 500},
        mean_ap=mean_ap,
        is_active=active,
        weights_source={
            "source": source,
            "description": "random initialisation (no pretrained weights)"
            if source == "random"
            else "ImageNet weights efficientnet-b3 from /w/b3.pth (local file)",
        },
    )


def test_url_name():
    assert reverse("retrieval:hashing") == URL


def test_page_without_a_model_says_what_to_do(client_for):
    page = client_for("trainer").get(URL).content.decode()
    assert 'data-testid="no-model"' in page
    assert "Fit unsupervised codes" in page
    assert "/retrieve/similar/" in page


def test_page_shows_the_active_deep_model_with_map_and_random_warning(client_for):
    version(1, method="itq")
    version(2, method="deep", active=True, source="random", mean_ap=0.8123)
    page = client_for("trainer").get(URL).content.decode()
    assert "deep hashing" in page and "81.2 %" in page and "chance 25.0 %" in page
    assert 'data-testid="random-warning"' in page
    assert "has to be (re)indexed" in page
    assert page.count('name="action" value="activate"') == 1  # only v1 can be activated


def test_page_shows_imagenet_source_without_warning(client_for):
    version(1, active=True)
    page = client_for("trainer").get(URL).content.decode()
    assert "ImageNet weights efficientnet-b3" in page
    assert 'data-testid="random-warning"' not in page
    assert "fitted on 500 archive images" in page


def test_fit_starts_a_job_and_refuses_a_second(client_for, django_capture_on_commit_callbacks):
    client = client_for("trainer")
    data = {
        "action": "fit",
        "sample_size": 50,
        "network": "tiny-cnn",
        "init": "random",
        "device": "cpu",
    }
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(URL, data)
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"{URL}?job={job.pk}"
    assert job.kind == "fit_hash_codes" and job.queue == "gpu"
    assert job.params["sample_size"] == 50 and job.params["network"] == "tiny-cnn"
    assert job.created_by.username == "trainer"
    page = client.get(response["Location"]).content.decode()
    assert f'data-status-url="/jobs/{job.pk}/status/"' in page
    response = client.post(URL, data)
    assert response.status_code == 200
    assert "Another hashing job is still" in response.content.decode()
    assert Job.objects.count() == 1


def test_fit_refused_without_weights(client_for, settings):
    settings.VIVA_HASHING_ALLOW_RANDOM = False
    response = client_for("trainer").post(
        URL,
        {
            "action": "fit",
            "sample_size": 50,
            "network": "tiny-cnn",
            "init": "pretrained",
            "device": "cpu",
        },
    )
    assert response.status_code == 200
    assert "Nothing was started" in response.content.decode()
    assert not Job.objects.exists()


def test_deep_training_refused_without_enough_labelled_categories(client_for):
    response = client_for("trainer").post(
        URL,
        {
            "action": "train",
            "min_positives": 2,
            "epochs": 1,
            "batch_size": 8,
            "network": "tiny-cnn",
            "init": "random",
            "device": "cpu",
        },
    )
    assert response.status_code == 200
    assert "at least 2 concepts" in response.content.decode()
    assert not Job.objects.exists()


def test_deep_training_starts_with_chosen_categories(client_for, users, tmp_path):
    from tests.test_grid_views import make_stills

    images = make_stills(6, tmp_path)
    cats = [Category.objects.create(name=n) for n in ("dog", "cat", "car")]
    save_labels(cats[0], [(im.pk, 1) for im in images[:3]], user=users["annotator"])
    save_labels(cats[1], [(im.pk, 1) for im in images[3:]], user=users["annotator"])
    client = client_for("trainer")
    page = client.get(URL).content.decode()
    assert "dog" in page and "(3 positives)" in page
    response = client.post(
        URL,
        {
            "action": "train",
            "min_positives": 3,
            "epochs": 2,
            "batch_size": 8,
            "category_ids": [cats[0].pk, cats[1].pk],
            "network": "tiny-cnn",
            "init": "random",
            "device": "cpu",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get()
    assert job.kind == "train_hashing"
    assert sorted(job.params["category_ids"]) == sorted([cats[0].pk, cats[1].pk])
    assert job.params["epochs"] == 2 and job.params["min_positives"] == 3


def test_bad_options_refused_by_service(db):
    with pytest.raises(service.HashingRefused, match="sample size"):
        service.start_fit(None, {"sample_size": 1})
    with pytest.raises(service.HashingRefused, match="Unknown network"):
        service.start_fit(None, {"network": "resnet-9000"})


def test_activate_an_older_version_and_refuse_one_without_permutation(
    client_for, tmp_path, settings
):
    settings.VIVA_MODELS_DIR = tmp_path
    old = version(1)
    (tmp_path / "hashing" / "1").mkdir(parents=True)
    (tmp_path / "hashing" / "1" / "weights.pt").write_bytes(b"x")
    version(2, active=True)
    bare = version(3, perm=False)
    client = client_for("trainer")
    response = client.post(URL, {"action": "activate", "version": old.pk})
    assert response.status_code == 302
    old.refresh_from_db()
    assert old.is_active
    response = client.post(URL, {"action": "activate", "version": bare.pk}, follow=True)
    assert "no stored bit permutation" in response.content.decode()
    bare.refresh_from_db()
    assert not bare.is_active
    assert client.post(URL, {"action": "activate", "version": 999}).status_code == 404


@pytest.mark.parametrize("role", ["researcher", "annotator"])
def test_lower_roles_are_refused(client_for, role):
    assert client_for(role).get(URL).status_code == 403
    assert client_for(role).post(URL, {"action": "fit"}).status_code == 403
    assert not Job.objects.exists()
