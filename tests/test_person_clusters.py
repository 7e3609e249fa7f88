"""Face clustering of a person (issue 7, item 2): the algorithm on synthetic embeddings,
building and replacing a category's clusters, labelling whole clusters, the overview.

Faces are created directly with synthetic FaceNet-like embeddings (one random unit
centre per identity plus noise): same identity ≈ 0.2 cosine distance apart, different
identities ≈ 1.0 — or 0.6 for "lookalikes" whose centres are correlated.
"""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from PIL import Image as PILImage
from sklearn.metrics import adjusted_rand_score

from annotation.clustering import (
    acquired_images,
    acquisition_status,
    build_clusters,
    cluster_embeddings,
    cluster_overview,
    label_cluster,
    pending_image_ids,
)
from annotation.models import (
    Annotation,
    AnnotationEvent,
    Candidate,
    Category,
    FaceCluster,
    FaceClusterMember,
    ImageOrigin,
    Source,
)
from viva.jobs import run_job
from viva.media import write_jpeg
from viva.models import Collection, Face, Image, Job

DIM = 512


# --------------------------------------------------------------------------- data helpers


def identities(n: int, rng: np.random.Generator, *, lookalike: float = 0.0) -> np.ndarray:
    """``n`` unit centres; with ``lookalike`` > 0 each shares that much of one direction."""
    centres = rng.normal(size=(n, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    if lookalike:
        common = rng.normal(size=DIM)
        common /= np.linalg.norm(common)
        centres = np.sqrt(lookalike) * common + np.sqrt(1 - lookalike) * centres
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return centres


def faces_of(centres: np.ndarray, counts: list[int], rng: np.random.Generator, noise=0.5):
    """Embeddings and true identities: centre + Gaussian noise of norm ≈ ``noise``."""
    vectors, truth = [], []
    for k, count in enumerate(counts):
        e = rng.normal(scale=noise / np.sqrt(DIM), size=(count, DIM))
        vectors.append(centres[k] + e)
        truth += [k] * count
    return np.vstack(vectors).astype(np.float32), np.asarray(truth)


def make_image(collection: Collection, i: int, *, with_file: bool = False) -> Image:
    """An image row (with a real JPEG under MEDIA_ROOT when ``with_file``)."""
    file = f"test-persons/img-{collection.pk}-{i}.jpg"
    if with_file:
        picture = PILImage.new("RGB", (160, 120), ((i * 37) % 256, (i * 91) % 256, 120))
        write_jpeg(picture, file)
    return Image.objects.create(
        collection=collection,
        file=file,
        thumbnail=file if with_file else "",
        sha256=f"{collection.pk:08d}{i:056d}",
        width=160,
        height=120,
        original_name=f"photo-{i}.jpg",
    )


def make_person_faces(
    category: Category,
    vectors: np.ndarray,
    *,
    via: str = "candidate",
    with_files: bool = False,
    embedder: str = "vggface2",
    start: int = 0,
) -> list[Face]:
    """One acquired image with one face per vector (box in the image's left half)."""
    collection, _ = Collection.objects.get_or_create(name="Web images", kind="web")
    faces = []
    for i, vector in enumerate(vectors, start=start):
        image = make_image(collection, i, with_file=with_files)
        image.faces_scanned_at = image.created_at
        image.save(update_fields=["faces_scanned_at"])
        if via == "candidate":
            Candidate.objects.create(category=category, image=image, source=Source.CRAWLER)
        else:
            ImageOrigin.objects.create(image=image, source=Source.UPLOAD, category=category)
        thumb = ""
        if with_files:
            thumb = f"test-persons/face-{collection.pk}-{i}.jpg"
            shade = int(40 + (i * 53) % 200)
            write_jpeg(PILImage.new("RGB", (48, 48), (shade, 90, 200 - shade // 2)), thumb)
        faces.append(
            Face.objects.create(
                image=image,
                box=[20.0, 10.0, 80.0, 85.0],
                score=0.99,
                quality=0.9,
                thumbnail=thumb,
                embedding=Face.pack_embedding(vector),
                embedder=embedder,
            )
        )
    return faces


def members_by_cluster(category: Category) -> list[set[int]]:
    return [
        set(c.members.values_list("face_id", flat=True))
        for c in FaceCluster.objects.filter(category=category).order_by("number")
    ]


@pytest.fixture
def person(db):
    return Category.objects.create(name="Angela Example", kind=Category.Kind.PERSON)


# --------------------------------------------------------------------------- algorithm


def test_clusters_recover_the_identities():
    rng = np.random.default_rng(1)
    vectors, truth = faces_of(identities(6, rng), [12, 9, 7, 5, 3, 1], rng)
    labels = cluster_embeddings(vectors, threshold=0.4, limit=100)
    assert len(set(labels)) == 6
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)


def test_lookalikes_stay_apart_and_clusters_are_pure():
    """Correlated identities (centres 0.5 cosine apart) must not share a cluster."""
    rng = np.random.default_rng(2)
    vectors, truth = faces_of(identities(8, rng, lookalike=0.5), [10] * 8, rng, noise=0.6)
    labels = cluster_embeddings(vectors, threshold=0.4, limit=100)
    for label in set(labels):
        assert len(set(truth[labels == label])) == 1, "a cluster mixes two people"
    # Pure, and not shattered either: at most a few more clusters than people.
    assert 8 <= len(set(labels)) <= 10


def test_cosine_ignores_the_vector_length():
    rng = np.random.default_rng(3)
    vectors, truth = faces_of(identities(3, rng), [5, 5, 5], rng)
    scaled = vectors * rng.uniform(0.1, 50, size=(len(vectors), 1)).astype(np.float32)
    labels = cluster_embeddings(scaled, threshold=0.4, limit=100)
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)


def test_too_many_clusters_are_merged_down_to_the_limit():
    rng = np.random.default_rng(4)
    vectors, truth = faces_of(identities(30, rng), [3] * 30, rng)
    assert len(set(cluster_embeddings(vectors, threshold=0.4, limit=100))) == 30
    labels = cluster_embeddings(vectors, threshold=0.4, limit=10)
    assert len(set(labels)) == 10
    # Merging further joins whole identities; it never splits one.
    for k in range(30):
        assert len(set(labels[truth == k])) == 1


def test_tiny_inputs():
    assert list(cluster_embeddings(np.zeros((0, DIM)))) == []
    assert list(cluster_embeddings(np.ones((1, DIM)))) == [0]


# --------------------------------------------------------------------------- build_clusters


def test_build_clusters_stores_largest_first_with_distances(person):
    rng = np.random.default_rng(5)
    vectors, truth = faces_of(identities(4, rng), [3, 8, 5, 1], rng)
    faces = make_person_faces(person, vectors[:9])
    faces += make_person_faces(person, vectors[9:], via="origin", start=9)
    clusters = build_clusters(person, threshold=0.4, limit=100)

    assert [c.number for c in clusters] == [1, 2, 3, 4]
    assert [c.size for c in clusters] == [8, 5, 3, 1]
    stored = FaceCluster.objects.filter(category=person).order_by("number")
    assert [c.size for c in stored] == [8, 5, 3, 1]
    expected = sorted(
        ({faces[i].pk for i in np.flatnonzero(truth == k)} for k in range(4)),
        key=len,
        reverse=True,
    )
    assert members_by_cluster(person) == expected
    distances = list(
        FaceClusterMember.objects.filter(cluster=stored[0]).values_list("distance", flat=True)
    )
    assert distances == sorted(distances)  # members in order of typicality
    assert all(0 <= d < 0.4 for d in distances)
    assert FaceClusterMember.objects.get(cluster=stored[3]).distance == pytest.approx(0, abs=1e-3)


def test_only_embedded_faces_of_acquired_images_of_this_person(person):
    rng = np.random.default_rng(6)
    vectors, _ = faces_of(identities(2, rng), [4, 4], rng)
    mine = make_person_faces(person, vectors[:6])
    other_person = Category.objects.create(name="Someone Else", kind=Category.Kind.PERSON)
    theirs = make_person_faces(other_person, vectors[6:], start=100)
    no_embedding = Face.objects.create(image=mine[0].image, box=[0, 0, 5, 5], score=0.95)
    other_model = make_person_faces(person, vectors[6:7], start=200, embedder="random")

    build_clusters(person, threshold=0.4, limit=100)
    clustered = set().union(*members_by_cluster(person))
    assert clustered == {f.pk for f in mine}
    assert not clustered & {f.pk for f in theirs}
    assert no_embedding.pk not in clustered and other_model[0].pk not in clustered
    assert acquired_images(person).count() == 7


def test_reclustering_replaces_clusters_and_keeps_labels(person):
    rng = np.random.default_rng(7)
    vectors, _ = faces_of(identities(3, rng), [4, 3, 2], rng)
    make_person_faces(person, vectors)
    first = build_clusters(person, threshold=0.4, limit=100)
    label_cluster(first[0], 1)
    labelled = set(Annotation.objects.filter(category=person).values_list("face_id", flat=True))

    # New images arrive; clustering again replaces every cluster row at once.
    more, _ = faces_of(identities(1, rng), [5], rng)
    make_person_faces(person, more, start=50)
    status = acquisition_status(person)
    assert (status.embedded, status.clustered, status.unclustered) == (14, 9, 5)
    second = build_clusters(person, threshold=0.4, limit=100)
    assert not FaceCluster.objects.filter(pk__in=[c.pk for c in first]).exists()
    assert [c.size for c in second] == [5, 4, 3, 2]
    assert acquisition_status(person).unclustered == 0
    assert (
        set(Annotation.objects.filter(category=person, value=1).values_list("face_id", flat=True))
        == labelled
    )


def test_faces_beyond_the_clustering_limit_join_the_nearest_cluster(person, settings):
    settings.VIVA_PERSON_CLUSTER_MAX_FACES = 10
    rng = np.random.default_rng(8)
    vectors, truth = faces_of(identities(2, rng), [8, 8], rng)
    faces = make_person_faces(person, vectors)
    build_clusters(person, threshold=0.4, limit=100)
    expected = [{faces[i].pk for i in np.flatnonzero(truth == k)} for k in range(2)]
    assert sorted(members_by_cluster(person), key=min) == sorted(expected, key=min)


def test_status_counts_pending_images(person):
    rng = np.random.default_rng(9)
    vectors, _ = faces_of(identities(1, rng), [3], rng)
    faces = make_person_faces(person, vectors)
    Image.objects.filter(pk=faces[0].image_id).update(faces_scanned_at=None)
    status = acquisition_status(person)
    assert (status.images, status.scanned, status.pending, status.faces) == (3, 2, 1, 3)
    assert pending_image_ids(person) == [faces[0].image_id]


# --------------------------------------------------------------------------- labelling


def test_label_a_whole_cluster_then_corrections_survive(person, users):
    rng = np.random.default_rng(10)
    vectors, _ = faces_of(identities(2, rng), [5, 2], rng)
    make_person_faces(person, vectors)
    big, small = build_clusters(person, threshold=0.4, limit=100)
    face_ids = list(big.members.values_list("face_id", flat=True))

    result = label_cluster(big, 1, user=users["annotator"])
    assert (result.saved, result.kept, result.faces) == (5, 0, 5)
    rows = Annotation.objects.filter(category=person, face_id__in=face_ids)
    assert {(a.value, a.source, a.user_id) for a in rows} == {
        (1, Source.CLUSTER, users["annotator"].pk)
    }
    assert AnnotationEvent.objects.filter(category_id=person.pk, source=Source.CLUSTER).count() == 5
    assert set(rows.values_list("image_id", flat=True)) == set(
        Face.objects.filter(pk__in=face_ids).values_list("image_id", flat=True)
    )

    # One face corrected in the grid; labelling the cluster again must not undo it.
    from annotation.labels import save_face_labels

    save_face_labels(person, [(face_ids[0], -1)], user=users["annotator"])
    result = label_cluster(big, 0, user=users["annotator"])
    assert (result.saved, result.kept) == (4, 1)
    assert Annotation.objects.get(category=person, face_id=face_ids[0]).value == -1
    # Clearing removes only the cluster's own labels.
    label_cluster(big, None)
    assert list(rows.values_list("face_id", "value")) == [(face_ids[0], -1)]
    # An explicit overwrite applies to every face.
    label_cluster(big, 1, overwrite=True)
    assert set(rows.values_list("value", flat=True)) == {1}
    assert label_cluster(small, -1).saved == 2


def test_a_cluster_bigger_than_one_label_batch_is_saved_in_slices(person, monkeypatch):
    # save_face_labels refuses more than MAX_BATCH labels; a big cluster must still save.
    monkeypatch.setattr("annotation.labels.MAX_BATCH", 3)
    rng = np.random.default_rng(11)
    vectors, _ = faces_of(identities(1, rng), [7], rng)
    make_person_faces(person, vectors)
    (cluster,) = build_clusters(person, threshold=0.9, limit=100)
    result = label_cluster(cluster, 1)
    assert (result.saved, result.unchanged, result.faces) == (7, 0, 7)
    assert Annotation.objects.filter(category=person, value=1).count() == 7
    assert label_cluster(cluster, 1).unchanged == 7


def test_overview_counts_and_samples_in_constant_queries(person):
    rng = np.random.default_rng(11)
    vectors, _ = faces_of(identities(5, rng), [12, 6, 4, 2, 1], rng)
    make_person_faces(person, vectors)
    clusters = build_clusters(person, threshold=0.4, limit=100)
    label_cluster(clusters[1], 1)
    label_cluster(clusters[2], -1)
    first = list(clusters[0].members.values_list("face_id", flat=True))
    from annotation.labels import save_face_labels

    save_face_labels(person, [(first[0], 0)])

    with CaptureQueriesContext(connection) as queries:
        overview = cluster_overview(person, samples=8)
    assert len(queries) == 2
    assert [c["number"] for c in overview] == [1, 2, 3, 4, 5]
    counts = [(c["positive"], c["negative"], c["neutral"], c["unlabelled"]) for c in overview]
    assert counts == [(0, 0, 1, 11), (6, 0, 0, 0), (0, 4, 0, 0), (0, 0, 0, 2), (0, 0, 0, 1)]
    samples = overview[0]["samples"]
    assert len(samples) == 8
    assert [s["distance"] for s in samples] == sorted(s["distance"] for s in samples)
    assert [len(c["samples"]) for c in overview[1:]] == [6, 4, 2, 1]


def test_cluster_faces_job_runs_and_is_idempotent(person, users):
    rng = np.random.default_rng(12)
    vectors, _ = faces_of(identities(3, rng), [4, 3, 2], rng)
    make_person_faces(person, vectors)
    job = Job.objects.create(
        kind="cluster_faces", params={"category_id": person.pk}, created_by=users["annotator"]
    )
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.result["clusters"] == 3 and job.result["faces"] == 9
    assert f"?category={person.pk}" in job.result["url"]
    assert job.progress == job.total == 1

    again = Job.objects.create(kind="cluster_faces", params={"category_id": person.pk})
    assert run_job(again.pk) == "succeeded"
    assert FaceCluster.objects.filter(category=person).count() == 3

    gone = Job.objects.create(kind="cluster_faces", params={"category_id": 987654})
    assert run_job(gone.pk) == "failed"
    gone.refresh_from_db()
    assert "no longer exists" in gone.error


@pytest.mark.worker
def test_cluster_again_through_a_real_worker(celery_worker, users, client_for, settings):
    """Above the inline limit, "cluster again" is a job a real worker runs; the page then
    shows the new clusters."""
    from django.urls import reverse

    from tests.conftest import wait_for

    settings.VIVA_PERSON_CLUSTER_INLINE_FACES = 3
    person = Category.objects.create(name="Worker Example", kind=Category.Kind.PERSON)
    rng = np.random.default_rng(13)
    vectors, _ = faces_of(identities(3, rng), [4, 3, 2], rng)
    make_person_faces(person, vectors)
    client = client_for("annotator")
    url = reverse("annotation:person_clusters")
    response = client.post(
        url, {"category": person.pk, "action": "cluster"}, HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 200, response.content
    job = Job.objects.get(pk=response.json()["job"])

    def finished():
        job.refresh_from_db()
        return not job.is_active

    wait_for(finished, timeout=60)
    assert job.status == Job.Status.SUCCEEDED, (job.error, celery_worker.output()[-2000:])
    assert job.result["clusters"] == 3
    page = client.get(url, {"category": person.pk}).content.decode()
    assert page.count('class="fc-card"') == 3 and 'data-testid="job" hidden' in page
