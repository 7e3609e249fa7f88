"""Saving labels through the grid's HTTP endpoint: protocol, event log, rejections,
concurrency, grid preferences."""

from __future__ import annotations

import random
import threading
from collections import defaultdict

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from annotation.models import Annotation, AnnotationEvent, Category, Source
from tests.test_grid_views import _grid_cache, add_candidates, grid_of, make_stills, select  # noqa: F401 (autouse fixture)
from viva.models import Image, Profile

SAVE = "annotation:save_labels"


def post(client: Client, payload, **extra):
    return client.post(reverse(SAVE), payload, content_type="application/json", **extra)


def batch(category: Category, pairs, source: str = "grid") -> dict:
    return {
        "category": category.pk,
        "source": source,
        "labels": [{"key": str(k), "value": v} for k, v in pairs],
    }


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return tmp_path


@pytest.fixture
def concept(db) -> Category:
    return Category.objects.create(name="Bakery (inside)")


@pytest.fixture
def images(media) -> list[Image]:
    return make_stills(6, media / "src")


# --------------------------------------------------------------------------- protocol


def test_save_and_load_through_http(client_for, users, concept, images):
    add_candidates(concept, images)
    client = client_for("annotator")
    select(client, concept)
    grid = grid_of(client.get(reverse("annotation:label") + "?tab=all"))
    keys = [it["key"] for it in grid["items"]]
    wanted = dict(zip(keys, [1, -1, 0, 1, None, -1], strict=True))
    response = post(client, batch(concept, wanted.items()))
    assert response.status_code == 200
    body = response.json()
    assert body["saved"] == 5 and body["created"] == 5 and body["rejected"] == []
    assert body["labels"] == wanted
    # Reload: the page shows what was saved.
    grid = grid_of(client.get(reverse("annotation:label") + "?tab=all"))
    assert {it["key"]: it["label"] for it in grid["items"]} == wanted
    # The unlabelled tab now only has the one left without a label.
    grid = grid_of(client.get(reverse("annotation:label")))
    assert [it["key"] for it in grid["items"]] == [keys[4]]


def test_unchanged_labels_write_nothing(client_for, concept, images):
    client = client_for("annotator")
    pairs = [(im.pk, 1) for im in images[:3]]
    assert post(client, batch(concept, pairs)).json()["saved"] == 3
    events = AnnotationEvent.objects.count()
    stamps = list(Annotation.objects.order_by("pk").values_list("updated_at", flat=True))
    body = post(client, batch(concept, pairs)).json()
    assert body["saved"] == 0 and body["unchanged"] == 3
    assert AnnotationEvent.objects.count() == events
    assert list(Annotation.objects.order_by("pk").values_list("updated_at", flat=True)) == stamps
    # Removing a label that does not exist is "unchanged" too.
    body = post(client, batch(concept, [(images[5].pk, None)])).json()
    assert body["saved"] == 0 and AnnotationEvent.objects.count() == events


def test_event_log_old_to_new_user_and_source(client_for, users, concept, images):
    image = images[0]
    post(client_for("annotator"), batch(concept, [(image.pk, 1)]))
    post(client_for("trainer"), batch(concept, [(image.pk, -1)], source="review"))
    post(client_for("annotator"), batch(concept, [(image.pk, None)]))
    events = list(AnnotationEvent.objects.filter(image_id=image.pk).order_by("id"))
    assert [(e.old_value, e.new_value, e.user.username, e.source) for e in events] == [
        (None, 1, "annotator", "grid"),
        (1, -1, "trainer", "review"),
        (-1, None, "annotator", "grid"),
    ]
    assert all(e.category_id == concept.pk and e.category_name == concept.name for e in events)
    assert not Annotation.objects.filter(image=image).exists()


def test_deleted_image_rejected_with_message(client_for, concept, images):
    gone = images[1].pk
    images[1].delete()
    response = post(client_for("annotator"), batch(concept, [(images[0].pk, 1), (gone, -1)]))
    assert response.status_code == 200
    body = response.json()
    assert body["saved"] == 1
    assert body["rejected"] == [{"key": str(gone), "error": "This image no longer exists."}]
    assert str(gone) not in body["labels"]
    assert not AnnotationEvent.objects.filter(image_id=gone).exists()


def test_deleted_category_rejected_with_message(client_for, concept, images):
    payload = batch(concept, [(images[0].pk, 1)])
    concept.delete()
    response = post(client_for("annotator"), payload)
    assert response.status_code == 409
    assert "no longer exists" in response.json()["error"]
    assert not Annotation.objects.exists() and not AnnotationEvent.objects.exists()


def test_bad_input_is_refused_clearly(client_for, concept, images):
    client = client_for("annotator")
    url = reverse(SAVE)
    response = client.post(url, "{not json", content_type="application/json")
    assert response.status_code == 400 and "JSON" in response.json()["error"]
    assert post(client, {"source": "grid", "labels": []}).status_code == 400
    assert post(client, {"category": concept.pk, "labels": "x"}).status_code == 400
    response = post(client, {**batch(concept, []), "source": "delete"})
    assert response.status_code == 400 and "source" in response.json()["error"]
    assert post(client, {"category": concept.pk, "labels": [{"value": 1}]}).status_code == 400
    # Per-item problems are rejected per key; the rest is saved.
    body = post(
        client,
        {
            "category": concept.pk,
            "source": "grid",
            "labels": [
                {"key": "crawler:abc", "value": 1},
                {"key": str(images[0].pk), "value": 5},
                {"key": str(images[1].pk), "value": "positive"},
            ],
        },
    ).json()
    assert body["saved"] == 1
    assert {r["key"] for r in body["rejected"]} == {"crawler:abc", str(images[0].pk)}
    assert Annotation.objects.get().image_id == images[1].pk


def test_roles_and_methods_answer_json(client_for, concept, images):
    payload = batch(concept, [(images[0].pk, 1)])
    response = post(client_for("researcher"), payload)
    assert response.status_code == 403 and "annotator" in response.json()["error"]
    response = post(Client(), payload)
    assert response.status_code == 403 and "logged out" in response.json()["error"]
    response = client_for("annotator").get(reverse(SAVE))
    assert response.status_code == 405 and response.json()["error"]
    assert not Annotation.objects.exists()


def test_csrf_is_enforced(users, concept, images):
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["annotator"])
    response = post(client, batch(concept, [(images[0].pk, 1)]))
    assert response.status_code == 403
    page_client = Client(enforce_csrf_checks=True)
    page_client.force_login(users["annotator"])
    page_client.get(reverse("annotation:categories"))  # sets the CSRF cookie
    token = page_client.cookies["csrftoken"].value
    response = post(page_client, batch(concept, [(images[0].pk, 1)]), HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200 and response.json()["saved"] == 1


def test_two_users_same_image_later_value_wins(client_for, concept, images):
    a, b = client_for("annotator"), client_for("trainer")
    post(a, batch(concept, [(images[0].pk, 1)]))
    post(b, batch(concept, [(images[0].pk, -1)]))
    assert Annotation.objects.get(image=images[0]).value == -1
    users = list(AnnotationEvent.objects.order_by("id").values_list("user__username", flat=True))
    assert users == ["annotator", "trainer"]


# --------------------------------------------------------------------------- concurrency


@pytest.mark.slow
def test_concurrent_saves_lose_nothing(transactional_db, users, settings, tmp_path):
    """Two clients, many overlapping batches at once: every change is logged and the
    final label of each image is the newest event's value (no lost update)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    category = Category.objects.create(name="Concurrent")
    images = make_stills(12, tmp_path / "src")
    ids = [im.pk for im in images]
    requests_per_client = 25
    results: dict[str, list] = defaultdict(list)
    errors: list[str] = []
    barrier = threading.Barrier(2)

    def worker(role: str, seed: int) -> None:
        try:
            client = Client()
            client.force_login(users[role])
            rng = random.Random(seed)
            barrier.wait()
            for _ in range(requests_per_client):
                chosen = rng.sample(ids, 8)
                pairs = [(i, rng.choice([1, -1, 0, None])) for i in chosen]
                response = post(client, batch(category, pairs))
                results[role].append((pairs, response.status_code, response.json()))
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(f"{role}: {exc!r}")
        finally:
            connection.close()  # each thread had its own connection

    threads = [
        threading.Thread(target=worker, args=(r, s)) for r, s in (("annotator", 1), ("trainer", 2))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    responses = [r for rs in results.values() for r in rs]
    assert len(responses) == 2 * requests_per_client
    assert all(code == 200 for _, code, _ in responses), [b for _, c, b in responses if c != 200]
    assert all(body["rejected"] == [] for _, _, body in responses)

    events = list(AnnotationEvent.objects.order_by("id"))
    # Every change the server reported is in the log, and nothing else.
    assert len(events) == sum(body["saved"] for _, _, body in responses)
    # Per image, events chain (old = previous new): no write was based on a stale read,
    # and the stored label is the newest event's value.
    final = dict(Annotation.objects.values_list("image_id", "value"))
    by_image: dict[int, list] = defaultdict(list)
    for e in events:
        by_image[e.image_id].append(e)
    for image_id in ids:
        previous = None
        for e in by_image[image_id]:
            assert e.old_value == previous, f"lost update on image {image_id}"
            assert e.new_value != e.old_value
            previous = e.new_value
        assert final.get(image_id) == previous
    # Both users' changes are kept.
    assert {e.user.username for e in events} == {"annotator", "trainer"}
    # The final value of each image is the one of the last committed request that sent
    # it. A request's events share (user, time); per client the requests ran in order,
    # so those groups map one-to-one onto the client's requests that changed something,
    # and the group's first event id gives the commit order.
    groups: dict[tuple, list] = defaultdict(list)
    for e in events:
        groups[(e.user_id, e.created_at)].append(e)
    committed = []
    for role, rs in results.items():
        keys = sorted((k for k in groups if k[0] == users[role].pk), key=lambda k: k[1])
        changing = [pairs for pairs, _, body in rs if body["saved"]]
        assert len(keys) == len(changing)
        for key, pairs in zip(keys, changing, strict=True):
            assert {(e.image_id, e.new_value) for e in groups[key]} <= set(pairs)
            committed.append((min(e.id for e in groups[key]), pairs))
    last: dict[int, int | None] = {}
    for _, pairs in sorted(committed, key=lambda c: c[0]):
        last.update(pairs)
    assert last and all(final.get(i) == v for i, v in last.items())


# --------------------------------------------------------------------------- grid prefs


def test_grid_prefs_stored_and_clamped(client_for, users, concept, images):
    client = client_for("annotator")
    url = reverse("annotation:grid_prefs")
    response = client.post(url, {"rows": 2, "cols": 3})
    assert response.json() == {"rows": 2, "cols": 3}
    profile = Profile.objects.get(user=users["annotator"])
    assert (profile.grid_rows, profile.grid_cols) == (2, 3)
    assert client.post(url, {"rows": 0, "cols": 99}).json() == {"rows": 1, "cols": 10}
    response = client.post(url, '{"rows": 3, "cols": "x"}', content_type="application/json")
    assert response.json() == {"rows": 3, "cols": 6}
    assert client.post(url, {"rows": 3}).status_code == 400
    # The label page follows the stored size.
    client.post(url, {"rows": 1, "cols": 4})
    add_candidates(concept, images)
    select(client, concept)
    grid = grid_of(client.get(reverse("annotation:label")))
    assert (grid["rows"], grid["cols"], len(grid["items"])) == (1, 4, 4)
    assert grid["page"]["num_pages"] == 2


def test_grid_prefs_for_researcher_and_not_anonymous(client_for):
    url = reverse("annotation:grid_prefs")
    assert client_for("researcher").post(url, {"rows": 5, "cols": 5}).status_code == 200
    assert Client().post(url, {"rows": 5, "cols": 5}).status_code == 403


def test_source_defaults_and_every_source_kept(client_for, concept, images):
    client = client_for("annotator")
    post(client, {"category": concept.pk, "labels": [{"key": images[0].pk, "value": 1}]})
    post(client, batch(concept, [(images[1].pk, 1)], source=Source.FEEDBACK))
    sources = dict(AnnotationEvent.objects.values_list("image_id", "source"))
    assert sources == {images[0].pk: "grid", images[1].pk: "feedback"}
