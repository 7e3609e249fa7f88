"""Retrieval feedback reaches the next training run (issue 5, "Tests"): labels saved from
the retrieval page (``annotation:save_labels`` with source "feedback", the payload of
static/annotation/grid.js) show up in :func:`training.label_matrix.build_label_matrix`.

A negative feedback on image X for concept C makes (X, C) NEG; a positive feedback makes
(X, C) POS and X's unlabelled columns WEAK; removing the label (value null) takes it out.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image as PILImage

from annotation.labels import save_labels
from annotation.models import Annotation, AnnotationEvent, Category
from training.constants import IGNORE, NEG, POS, WEAK
from training.label_matrix import build_label_matrix
from viva.ingest.importer import import_image
from viva.models import Collection

pytestmark = pytest.mark.django_db


def jpeg(path, seed: int):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(path, "JPEG", quality=80)
    return path


@pytest.fixture
def archive(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    collection = Collection.objects.create(name="Feedback archive")
    src = tmp_path / "src"
    src.mkdir()
    images = []
    for i in range(8):
        status, image = import_image(jpeg(src / f"f{i}.jpg", i), collection)
        assert status != "skipped"
        images.append(image)
    cats = {name: Category.objects.create(name=name) for name in ("car", "tree", "dog")}
    # Earlier labels (grid): each concept is trainable with min_positives=1.
    save_labels(cats["car"], [(images[0].pk, 1), (images[1].pk, 1)])
    save_labels(cats["tree"], [(images[2].pk, 1), (images[3].pk, -1)])
    save_labels(cats["dog"], [(images[4].pk, 1)])
    return {"images": images, "cats": cats}


def feedback(client, category: Category, labels: list[tuple[int, int | None]]):
    """POST what grid.js posts from the retrieval page."""
    payload = {
        "category": category.pk,
        "source": "feedback",
        "labels": [{"key": str(pk), "value": value} for pk, value in labels],
    }
    response = client.post(
        reverse("annotation:save_labels"), json.dumps(payload), content_type="application/json"
    )
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["rejected"] == []
    return data


def entry(matrix, image, category) -> int | None:
    rows = np.flatnonzero(matrix.image_ids == image.pk)
    if not len(rows):
        return None  # the image is not in the matrix at all
    return int(matrix.targets[rows[0], matrix.concept_ids.index(category.pk)])


def test_feedback_labels_appear_in_next_label_matrix(archive, client_for):
    images, cats = archive["images"], archive["cats"]
    car, tree, dog = cats["car"], cats["tree"], cats["dog"]
    x, y = images[6], images[7]  # never labelled before the feedback

    before = build_label_matrix(min_positives=1)
    assert set(before.concept_ids) == {car.pk, tree.pk, dog.pk}
    assert entry(before, x, car) is None and entry(before, y, tree) is None
    # A positive for dog is weak evidence against car (and labelled as it is).
    assert entry(before, images[4], car) == WEAK
    assert entry(before, images[3], tree) == NEG

    client = client_for("annotator")
    # The researcher looks at the ranking for "car": X is a false hit, Y is a true one.
    data = feedback(client, car, [(x.pk, -1), (y.pk, 1)])
    assert data["created"] == 2 and data["labels"] == {str(x.pk): -1, str(y.pk): 1}
    # ...and on the ranking for "tree", image 0 (a car) is wrongly ranked high.
    feedback(client, tree, [(images[0].pk, -1)])

    for image, category, value in ((x, car, -1), (y, car, 1), (images[0], tree, -1)):
        ann = Annotation.objects.get(image=image, category=category, face__isnull=True)
        assert (ann.value, ann.source) == (value, "feedback")
    assert AnnotationEvent.objects.filter(source="feedback").count() == 3

    after = build_label_matrix(min_positives=1)
    assert entry(after, x, car) == NEG
    # X is positive for nothing: its other columns carry no information.
    assert entry(after, x, tree) == IGNORE and entry(after, x, dog) == IGNORE
    assert entry(after, y, car) == POS
    assert entry(after, y, tree) == WEAK and entry(after, y, dog) == WEAK
    # A feedback negative overrides the WEAK a car positive gave image 0 for "tree".
    assert entry(before, images[0], tree) == WEAK
    assert entry(after, images[0], tree) == NEG
    assert entry(after, images[0], car) == POS
    # The matrix grows by exactly the two feedback images; files come along.
    assert set(after.image_ids.tolist()) == set(before.image_ids.tolist()) | {x.pk, y.pk}
    assert after.files[after.image_ids.tolist().index(y.pk)] == y.file

    # Feedback may make a concept trainable: "dog" gets a second positive at threshold 2.
    assert dog.pk not in build_label_matrix(min_positives=2).concept_ids
    feedback(client, dog, [(images[5].pk, 1)])
    assert dog.pk in build_label_matrix(min_positives=2).concept_ids

    # Taking the feedback back (value null) removes it from the next matrix.
    feedback(client, car, [(x.pk, None)])
    assert entry(build_label_matrix(min_positives=1), x, car) is None


def test_feedback_requires_annotator_role(archive, client_for):
    x = archive["images"][6]
    response = client_for("researcher").post(
        reverse("annotation:save_labels"),
        json.dumps(
            {
                "category": archive["cats"]["car"].pk,
                "source": "feedback",
                "labels": [{"key": str(x.pk), "value": -1}],
            }
        ),
        content_type="application/json",
    )
    assert response.status_code == 403
    assert not Annotation.objects.filter(image=x).exists()
    assert entry(build_label_matrix(min_positives=1), x, archive["cats"]["car"]) is None
