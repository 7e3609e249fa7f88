"""Labelling a person by face clusters in a real browser (Chromium through Playwright).

An annotator labels whole clusters with the keyboard and with a button, sees the whole
image with the face framed when hovering a crop, opens a cluster's faces, corrects one
face, and labels the cluster again without undoing that correction.
Screenshots go to var/test/screens/ (persons-*.png).
"""

from __future__ import annotations

import numpy as np
import pytest
from django.urls import reverse
from playwright.sync_api import expect

from annotation.clustering import build_clusters
from annotation.models import Annotation, Category, FaceCluster, Source
from tests.fixtures_browser import login, screenshot
from tests.test_person_clusters import faces_of, identities, make_person_faces

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def labels_of(person: Category, number: int) -> dict[int, tuple[int, str]]:
    cluster = FaceCluster.objects.get(category=person, number=number)
    faces = list(cluster.members.values_list("face_id", flat=True))
    return {
        a.face_id: (a.value, a.source)
        for a in Annotation.objects.filter(category=person, face_id__in=faces)
    }


def test_label_a_face_cluster(page, live_server, users):
    person = Category.objects.create(name="Marie Example", kind=Category.Kind.PERSON)
    rng = np.random.default_rng(31)
    vectors, _ = faces_of(identities(3, rng), [5, 3, 2], rng)
    make_person_faces(person, vectors, with_files=True)
    build_clusters(person, threshold=0.4, limit=100)

    login(page, live_server, users["annotator"])
    page.goto(live_server.url + reverse("annotation:person_clusters") + f"?category={person.pk}")
    cards = page.locator(".fc-card")
    expect(cards).to_have_count(3)
    expect(cards.nth(0)).to_have_class(r"fc-card cursor")

    # Keyboard: 1 labels the whole first cluster positive; the cursor moves on; n = negative.
    page.keyboard.press("1")
    expect(cards.nth(0).locator('[data-count="positive"]')).to_have_text("5")
    expect(cards.nth(0)).to_have_attribute("data-state", "pos")
    expect(cards.nth(1)).to_have_class(r"fc-card cursor")
    page.keyboard.press("n")
    expect(cards.nth(1)).to_have_attribute("data-state", "neg")
    expect(page.locator(".fc-flash")).to_contain_text("3 face(s) labelled negative")

    # Hovering a crop shows the whole image with the face framed.
    cards.nth(2).locator(".fc-sample").first.hover()
    expect(page.locator(".fc-preview")).to_be_visible()
    expect(page.locator(".fc-preview-box")).to_be_visible()
    screenshot(page, "persons-clusters")

    # A button labels the third cluster neutral.
    cards.nth(2).get_by_role("button", name="Neutral").click()
    expect(cards.nth(2)).to_have_attribute("data-state", "neu")
    assert set(labels_of(person, 1).values()) == {(1, Source.CLUSTER)}
    assert set(labels_of(person, 2).values()) == {(-1, Source.CLUSTER)}
    assert set(labels_of(person, 3).values()) == {(0, Source.CLUSTER)}

    # Back to cluster 2, open its faces (Enter), correct the first face to positive.
    page.keyboard.press("k")
    expect(cards.nth(1)).to_have_class(r"fc-card cursor")
    page.keyboard.press("Enter")
    page.wait_for_url("**/persons/faces/?*cluster=2*")
    cells = page.locator("#vgrid .vcell")
    expect(cells).to_have_count(3)
    first_face = int(cells.nth(0).get_attribute("data-key"))
    cells.nth(0).locator(".vcell-media").hover()
    expect(page.locator(".fc-preview-box")).to_be_visible()
    page.keyboard.press("1")
    expect(cells.nth(0)).to_have_attribute("data-label", "pos")
    page.keyboard.press("s")
    expect(page.locator("#vgrid")).to_have_attribute("data-unsaved", "0")
    screenshot(page, "persons-faces")
    assert labels_of(person, 2)[first_face] == (1, Source.GRID)

    # Labelling cluster 2 negative again keeps the single correction.
    page.goto(live_server.url + reverse("annotation:person_clusters") + f"?category={person.pk}")
    page.keyboard.press("j")
    page.keyboard.press("2")
    expect(page.locator(".fc-flash")).to_contain_text("1 face(s) labelled one by one kept")
    labels = labels_of(person, 2)
    assert labels.pop(first_face) == (1, Source.GRID)
    assert set(labels.values()) == {(-1, Source.CLUSTER)}
    # The counts on the card show the mix.
    expect(cards.nth(1).locator('[data-count="positive"]')).to_have_text("1")
    expect(cards.nth(1).locator('[data-count="negative"]')).to_have_text("2")
    assert not page.viva_errors, page.viva_errors


def test_cluster_again_asks_first(page, live_server, users):
    person = Category.objects.create(name="Paul Example", kind=Category.Kind.PERSON)
    rng = np.random.default_rng(32)
    vectors, _ = faces_of(identities(2, rng), [3, 2], rng)
    make_person_faces(person, vectors, with_files=True)
    old = {c.pk for c in build_clusters(person, threshold=0.4, limit=100)}

    login(page, live_server, users["annotator"])
    page.goto(live_server.url + reverse("annotation:person_clusters") + f"?category={person.pk}")
    asked = []
    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    page.get_by_role("button", name="Cluster again").click()
    expect(page.locator(".fc-card")).to_have_count(2)
    assert asked and "Labels are kept" in asked[0]
    assert {c.pk for c in FaceCluster.objects.filter(category=person)} == old

    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Cluster again").click()
    expect(page.locator(".messages")).to_contain_text("into 2 cluster(s)")
    assert not {c.pk for c in FaceCluster.objects.filter(category=person)} & old
    assert not page.viva_errors, page.viva_errors


def test_detection_progress_then_faces_are_grouped(page, live_server, users):
    """A running face detection shows a live progress bar; when it ends, the faces are
    grouped into clusters without another click (there were none to replace)."""
    from django.utils import timezone

    from viva.models import Job

    person = Category.objects.create(name="Ida Example", kind=Category.Kind.PERSON)
    rng = np.random.default_rng(33)
    vectors, _ = faces_of(identities(3, rng), [3, 2, 2], rng)
    make_person_faces(person, vectors, with_files=True)
    job = Job.objects.create(
        kind="index_faces",
        title="Face detection for “Ida Example”",
        params={"image_ids": [], "category_id": person.pk},
        status=Job.Status.RUNNING,
        heartbeat_at=timezone.now(),
        started_at=timezone.now(),
        progress=3,
        total=10,
        created_by=users["annotator"],
    )
    login(page, live_server, users["annotator"])
    page.goto(live_server.url + reverse("annotation:person_clusters") + f"?category={person.pk}")
    bar = page.locator(".fc-job [data-field=progress]")
    expect(bar).to_be_visible()
    expect(bar).to_contain_text("30%")
    expect(page.locator(".fc-card")).to_have_count(0)
    Job.objects.filter(pk=job.pk).update(progress=7, heartbeat_at=timezone.now())
    expect(bar).to_contain_text("70%")
    screenshot(page, "persons-detecting")

    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.SUCCEEDED, progress=10, finished_at=timezone.now()
    )
    expect(page.locator(".fc-card")).to_have_count(3, timeout=20_000)
    assert [c.size for c in FaceCluster.objects.filter(category=person)] == [3, 2, 2]
    assert not page.viva_errors, page.viva_errors
