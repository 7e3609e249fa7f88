"""Person labelling pages through HTTP: the cluster page and its actions, the face grid,
the face-label endpoint, face review, and the label/review pages leading to them."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from django.urls import reverse

from annotation.clustering import build_clusters
from annotation.models import Annotation, AnnotationEvent, Category, FaceCluster, Source
from tests.test_person_clusters import faces_of, identities, make_person_faces
from viva.jobs import JobError
from viva.models import Face, Image, Job

CLUSTERS = reverse("annotation:person_clusters")
FACES = reverse("annotation:person_faces")
REVIEW = reverse("annotation:person_review")
SAVE = reverse("annotation:save_face_labels")


@pytest.fixture
def person(db):
    return Category.objects.create(name="Olaf Example", kind=Category.Kind.PERSON)


@pytest.fixture
def clustered(person):
    """A person with three identities among its faces (sizes 6, 4, 2), clustered."""
    rng = np.random.default_rng(21)
    vectors, _ = faces_of(identities(3, rng), [6, 4, 2], rng)
    faces = make_person_faces(person, vectors)
    build_clusters(person, threshold=0.4, limit=100)
    return faces


def grid_of(response) -> dict:
    html = response.content.decode()
    match = re.search(r'<script id="vgrid-data" type="application/json">(.*?)</script>', html, re.S)
    assert match, "no grid on the page"
    return json.loads(match.group(1))


def post_json(client, url, payload):
    return client.post(
        url, json.dumps(payload), content_type="application/json", HTTP_ACCEPT="application/json"
    )


def cluster_faces(person, number) -> list[int]:
    cluster = FaceCluster.objects.get(category=person, number=number)
    return list(cluster.members.values_list("face_id", flat=True))


# --------------------------------------------------------------------------- cluster page


def test_chooser_without_a_person_and_for_a_concept(client_for, person):
    client = client_for("annotator")
    page = client.get(CLUSTERS).content.decode()
    assert "Choose a person" in page and f"?category={person.pk}" in page
    concept = Category.objects.create(name="Bakery")
    page = client.get(CLUSTERS, {"category": concept.pk}).content.decode()
    assert "is a concept" in page
    page = client.get(FACES, {"category": 987654}).content.decode()
    assert "no longer exists" in page


def test_cluster_page_shows_status_clusters_and_selects_the_person(
    client_for, person, clustered, django_assert_max_num_queries
):
    client = client_for("annotator")
    Image.objects.filter(pk=clustered[0].image_id).update(faces_scanned_at=None)
    with django_assert_max_num_queries(25):
        response = client.get(CLUSTERS, {"category": person.pk})
    page = response.content.decode()
    assert response.status_code == 200
    assert re.search(r"<strong>12</strong> acquired images", page)
    assert 'data-testid="pending">1<' in page and "Detect faces in 1 image" in page
    assert page.count('class="fc-card"') == 3
    assert "Cluster again" in page and "data-confirm=" in page
    assert page.count('class="fc-sample"') == 6 + 4 + 2
    # The person is now the session's selection (other pages follow it).
    assert client.get(CLUSTERS).context["person"] == person
    data = json.loads(re.search(r'id="fc-data" type="application/json">(.*?)<', page).group(1))
    assert [c["size"] for c in data["clusters"]] == [6, 4, 2]
    assert data["auto_cluster"] is False  # clusters exist: never replaced without asking


def test_label_a_cluster_by_json(client_for, users, person, clustered):
    client = client_for("annotator")
    response = post_json(
        client, CLUSTERS, {"category": person.pk, "action": "label", "cluster": 1, "value": 1}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["counts"] == {"positive": 6, "negative": 0, "neutral": 0, "unlabelled": 0}
    assert body["state"] == "pos" and "6 face(s) labelled positive" in body["message"]
    faces = cluster_faces(person, 1)
    rows = Annotation.objects.filter(category=person, face_id__in=faces)
    assert {(a.value, a.source, a.user_id) for a in rows} == {
        (1, Source.CLUSTER, users["annotator"].pk)
    }

    # Errors are JSON the page can show: unknown value, a cluster gone, a person gone.
    bad = post_json(
        client, CLUSTERS, {"category": person.pk, "action": "label", "cluster": 1, "value": "maybe"}
    )
    assert bad.status_code == 400 and "Unknown label" in bad.json()["error"]
    gone = post_json(
        client, CLUSTERS, {"category": person.pk, "action": "label", "cluster": 99, "value": 1}
    )
    assert gone.status_code == 409 and "clustered again" in gone.json()["error"]
    # A page loaded before someone clustered again must not label the new cluster 1.
    stale = post_json(
        client,
        CLUSTERS,
        {
            "category": person.pk,
            "action": "label",
            "cluster": 2,
            "value": 1,
            "version": "2001-01-01T00:00:00+00:00",
        },
    )
    assert stale.status_code == 409 and "nothing was labelled" in stale.json()["error"]
    assert not Annotation.objects.filter(face_id__in=cluster_faces(person, 2)).exists()
    other = Category.objects.create(name="Gone Person", kind=Category.Kind.PERSON)
    other_pk = other.pk
    other.delete()
    deleted = post_json(
        client, CLUSTERS, {"category": other_pk, "action": "label", "cluster": 1, "value": 1}
    )
    assert deleted.status_code == 409 and "no longer exists" in deleted.json()["error"]
    nobody = post_json(client, CLUSTERS, {"action": "label", "cluster": 1, "value": 1})
    assert nobody.status_code == 400 and "No person given" in nobody.json()["error"]
    concept = Category.objects.create(name="Harbour")
    wrong = post_json(
        client, CLUSTERS, {"category": concept.pk, "action": "label", "cluster": 1, "value": 1}
    )
    assert wrong.status_code == 400 and "is a concept" in wrong.json()["error"]
    # A researcher may not label.
    denied = post_json(
        client_for("researcher"),
        CLUSTERS,
        {"category": person.pk, "action": "label", "cluster": 2, "value": 1},
    )
    assert denied.status_code == 403
    assert not Annotation.objects.filter(face_id__in=cluster_faces(person, 2)).exists()


def test_label_a_cluster_without_javascript(client_for, person, clustered):
    client = client_for("annotator")
    response = client.post(
        CLUSTERS, {"category": person.pk, "action": "label", "cluster": 2, "value": "-1"}
    )
    assert response.status_code == 302 and f"category={person.pk}" in response["Location"]
    assert set(
        Annotation.objects.filter(face_id__in=cluster_faces(person, 2)).values_list(
            "value", flat=True
        )
    ) == {-1}
    page = client.get(response["Location"]).content.decode()
    assert "4 face(s) labelled negative" in page


def test_cluster_again_inline_keeps_labels(client_for, person, clustered):
    client = client_for("annotator")
    post_json(
        client, CLUSTERS, {"category": person.pk, "action": "label", "cluster": 1, "value": 1}
    )
    old = set(FaceCluster.objects.filter(category=person).values_list("pk", flat=True))
    response = post_json(client, CLUSTERS, {"category": person.pk, "action": "cluster"})
    assert response.status_code == 200 and response.json()["clusters"] == 3
    assert "Labels were kept" in response.json()["message"]
    assert not FaceCluster.objects.filter(pk__in=old).exists()
    assert Annotation.objects.filter(category=person, value=1).count() == 6


def test_cluster_again_goes_to_a_job_when_large(client_for, person, clustered, settings):
    settings.VIVA_PERSON_CLUSTER_INLINE_FACES = 5
    client = client_for("annotator")
    response = post_json(client, CLUSTERS, {"category": person.pk, "action": "cluster"})
    assert response.status_code == 200
    job = Job.objects.get(pk=response.json()["job"])
    assert job.kind == "cluster_faces" and job.params == {"category_id": person.pk}
    # While it runs, the page shows its progress bar and refuses a second start.
    page = client.get(CLUSTERS, {"category": person.pk}).content.decode()
    assert reverse("jobs:status", args=[job.pk]) in page and 'data-field="progress"' in page
    again = post_json(client, CLUSTERS, {"category": person.pk, "action": "cluster"})
    assert again.status_code == 409 and "running" in again.json()["error"]


def test_nothing_to_cluster_says_why(client_for, person):
    response = post_json(
        client_for("annotator"), CLUSTERS, {"category": person.pk, "action": "cluster"}
    )
    assert response.status_code == 400 and "detect faces" in response.json()["error"]


def test_detect_faces_starts_index_faces_for_pending_images(
    client_for, person, clustered, monkeypatch
):
    import annotation.views.persons as views

    pending = sorted(f.image_id for f in clustered[:2])
    Image.objects.filter(pk__in=pending).update(faces_scanned_at=None)
    started = []

    def fake_start(kind, params, *, user=None, title=""):
        started.append((kind, params, user.username))
        return Job.objects.create(kind=kind, params=params, title=title, created_by=user)

    monkeypatch.setattr(views, "start_job", fake_start)
    client = client_for("annotator")
    response = post_json(client, CLUSTERS, {"category": person.pk, "action": "detect"})
    assert response.status_code == 200, response.content
    assert started == [
        ("index_faces", {"image_ids": pending, "category_id": person.pk}, "annotator")
    ]
    assert "2 image(s)" in response.json()["message"]

    def broken(*args, **kwargs):
        raise JobError("Unknown job kind 'index_faces'.")

    Job.objects.all().delete()
    monkeypatch.setattr(views, "start_job", broken)
    failed = post_json(client, CLUSTERS, {"category": person.pk, "action": "detect"})
    assert failed.status_code == 503 and "cannot start" in failed.json()["error"]


# --------------------------------------------------------------------------- face grid


def test_face_grid_of_a_cluster_and_of_all_faces(client_for, person, clustered):
    client = client_for("annotator")
    grid = grid_of(client.get(FACES, {"category": person.pk, "cluster": 2}))
    keys = [int(it["key"]) for it in grid["items"]]
    assert keys == cluster_faces(person, 2)  # most typical first
    item = grid["items"][0]
    assert item["box"] == [20.0, 10.0, 80.0, 85.0] and item["size"] == [160, 120]
    assert grid["save_url"] == SAVE and grid["category_id"] == person.pk
    assert grid["source"] == Source.GRID and not grid["readonly"]

    all_faces = grid_of(client.get(FACES, {"category": person.pk}))
    assert all_faces["page"]["total"] == 12

    post_json(client, SAVE, {"category": person.pk, "labels": [{"key": keys[0], "value": 1}]})
    unlabelled = grid_of(
        client.get(FACES, {"category": person.pk, "cluster": 2, "show": "unlabelled"})
    )
    assert [int(it["key"]) for it in unlabelled["items"]] == keys[1:]

    missing = client.get(FACES, {"category": person.pk, "cluster": 42}).content.decode()
    assert "Cluster 42 no longer exists" in missing


def test_face_grid_pages(client_for, users, person, clustered):
    from tests.test_grid_views import set_size

    set_size(users["annotator"], 2, 3)
    client = client_for("annotator")
    first = grid_of(client.get(FACES, {"category": person.pk}))
    assert len(first["items"]) == 6 and first["page"]["num_pages"] == 2
    second = grid_of(client.get(first["page"]["next_url"]))
    assert len(second["items"]) == 6 and second["page"]["next_url"] is None
    assert not {it["key"] for it in first["items"]} & {it["key"] for it in second["items"]}


# --------------------------------------------------------------------------- save endpoint


def test_save_face_labels(client_for, users, person, clustered):
    client = client_for("annotator")
    a, b = clustered[0].pk, clustered[1].pk
    response = post_json(
        client,
        SAVE,
        {
            "category": person.pk,
            "source": "review",
            "labels": [
                {"key": str(a), "value": 1},
                {"key": str(b), "value": "negative"},
                {"key": "987654", "value": 1},
                {"key": "x", "value": 1},
            ],
        },
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["created"] == 2 and body["labels"] == {str(a): 1, str(b): -1}
    assert {r["key"] for r in body["rejected"]} == {"987654", "x"}
    ann = Annotation.objects.get(category=person, face_id=a)
    assert (ann.value, ann.source, ann.image_id) == (1, Source.REVIEW, clustered[0].image_id)
    assert AnnotationEvent.objects.filter(face_id=a, new_value=1).exists()
    # Removing a label is logged too.
    post_json(client, SAVE, {"category": person.pk, "labels": [{"key": str(a), "value": None}]})
    assert not Annotation.objects.filter(face_id=a).exists()
    assert AnnotationEvent.objects.filter(face_id=a, old_value=1, new_value=None).exists()


def test_save_face_labels_errors(client_for, client, person, clustered):
    annotator = client_for("annotator")
    face = str(clustered[0].pk)
    concept = Category.objects.create(name="Harbour")
    wrong = post_json(
        annotator, SAVE, {"category": concept.pk, "labels": [{"key": face, "value": 1}]}
    )
    assert wrong.status_code == 400 and "persons only" in wrong.json()["error"]
    pk = person.pk
    person.delete()
    gone = post_json(annotator, SAVE, {"category": pk, "labels": [{"key": face, "value": 1}]})
    assert gone.status_code == 409 and "no longer exists" in gone.json()["error"]
    assert post_json(annotator, SAVE, {"labels": []}).status_code == 400
    not_json = annotator.post(SAVE, {"category": pk})
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]
    denied = post_json(client_for("researcher"), SAVE, {"category": pk, "labels": []})
    assert denied.status_code == 403 and "error" in denied.json()
    anonymous = post_json(client, SAVE, {"category": pk, "labels": []})
    assert anonymous.status_code == 403 and "logged out" in anonymous.json()["error"]


# --------------------------------------------------------------------------- review + routing


def test_review_lists_faces_by_label(client_for, person, clustered):
    client = client_for("annotator")
    post_json(
        client, CLUSTERS, {"category": person.pk, "action": "label", "cluster": 1, "value": 1}
    )
    post_json(
        client, CLUSTERS, {"category": person.pk, "action": "label", "cluster": 3, "value": -1}
    )
    response = client.get(REVIEW, {"category": person.pk})
    grid = grid_of(response)
    assert {int(it["key"]) for it in grid["items"]} == set(cluster_faces(person, 1))
    assert grid["source"] == Source.REVIEW and "face cluster" in grid["items"][0]["extra"]
    assert [(n, c) for n, c, _url in response.context["tabs"]] == [
        ("positive", 6),
        ("negative", 2),
        ("neutral", 0),
    ]
    negative = grid_of(client.get(REVIEW, {"category": person.pk, "value": "negative"}))
    assert {int(it["key"]) for it in negative["items"]} == set(cluster_faces(person, 3))


def test_label_and_review_pages_lead_persons_to_the_face_pages(client_for, person):
    client = client_for("annotator")
    client.post(reverse("annotation:category_select"), {"category": person.pk})
    label = client.get(reverse("annotation:label"))
    assert label.status_code == 302 and label["Location"] == f"{CLUSTERS}?category={person.pk}"
    review = client.get(reverse("annotation:review"), {"value": "negative"})
    assert review.status_code == 302
    assert review["Location"] == f"{REVIEW}?category={person.pk}&value=negative"
    # Concepts keep their grid.
    concept = Category.objects.create(name="Lighthouse")
    client.post(reverse("annotation:category_select"), {"category": concept.pk})
    assert client.get(reverse("annotation:label")).status_code == 200
    assert client.get(reverse("annotation:review")).status_code == 200


def test_faces_without_crops_fall_back_to_the_image_thumbnail(client_for, person):
    rng = np.random.default_rng(3)
    vectors, _ = faces_of(identities(1, rng), [2], rng)
    faces = make_person_faces(person, vectors)
    Face.objects.filter(pk=faces[0].pk).update(thumbnail="")
    Image.objects.filter(pk=faces[0].image_id).update(thumbnail="thumbs/x.jpg")
    grid = grid_of(client_for("annotator").get(FACES, {"category": person.pk}))
    assert grid["items"][0]["thumb"].endswith("thumbs/x.jpg")


def test_cluster_page_queries_do_not_grow_with_clusters(client_for, person):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for("annotator")
    rng = np.random.default_rng(22)
    vectors, _ = faces_of(identities(2, rng), [3, 2], rng)
    make_person_faces(person, vectors)
    build_clusters(person, threshold=0.4, limit=100)
    client.get(CLUSTERS, {"category": person.pk})  # session and selection settle
    with CaptureQueriesContext(connection) as few:
        client.get(CLUSTERS, {"category": person.pk})
    vectors, _ = faces_of(identities(20, rng), [2] * 20, rng)
    make_person_faces(person, vectors, start=100)
    build_clusters(person, threshold=0.4, limit=100)
    with CaptureQueriesContext(connection) as many:
        page = client.get(CLUSTERS, {"category": person.pk}).content.decode()
    assert page.count('class="fc-card"') == 22
    assert len(many) == len(few), [q["sql"] for q in many]
