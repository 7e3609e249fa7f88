"""Person retrieval (issue 7, item 4): ranked faces, combined queries with concepts and
years, feedback as face labels, export with face boxes."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest
from django.urls import reverse

from annotation.models import Annotation, Category, Label, Source
from retrieval.export import export_dir
from retrieval.models import InferenceRun, Prediction
from retrieval.persons.inference import start_person_inference
from tests.person_data import add_faces, make_video, make_world, sample_faces
from tests.test_person_training import FakeContext
from training.models import ModelVersion
from training.persons.service import train_persons
from viva.jobs import start_job
from viva.jobs.runner import run_job
from viva.models import Face


@pytest.fixture
def archive(db, settings, tmp_path, users):
    """Ada and Bert in a 1975 video; more Ada in a 1985 video; persons recognised; a
    published concept run that scores "Studio" on some keyframes of both videos."""
    settings.VIVA_MODELS_DIR = tmp_path / "models"
    world = make_world({"Ada": 15, "Bert": 15}, unlabelled_each=8, unknown_labelled=20, year=1975)
    import numpy as np

    centre = Face.unpack_embeddings([world.labelled["Ada"][0].embedding])[0]
    later = make_video("Talk show", 1985)
    ada_1985 = add_faces(later, sample_faces(centre, 4, np.random.default_rng(9)))
    train_persons(FakeContext({"min_faces": 10}))
    job = start_person_inference(users["trainer"])
    assert run_job(job.pk) == "succeeded"

    studio = Category.objects.create(name="Studio")
    concept_version = ModelVersion.objects.create(
        version=1,
        directory="concept/1",
        weights_path="concept/1/weights.pt",
        class_map=[{"index": 0, "id": studio.pk, "name": "Studio"}],
        is_active=True,
    )
    concept_run = InferenceRun.objects.create(
        kind="concept",
        model_version=concept_version,
        score_floor=0.05,
        status=InferenceRun.Status.COMPLETE,
        is_published=True,
    )
    studio_faces = world.unlabelled["Ada"][:4] + world.unlabelled["Bert"][:2] + ada_1985[:2]
    Prediction.objects.bulk_create(
        Prediction(run=concept_run, category=studio, image_id=f.image_id, score=0.9)
        for f in studio_faces
    )
    world.studio = studio
    world.ada_1985 = ada_1985
    world.studio_faces = studio_faces
    return world


def select(client, category) -> None:
    """Select the category and show 100 cells a page (all of a person's keyframes)."""
    client.post(reverse("annotation:category_select"), {"category": category.pk})
    client.post(reverse("annotation:grid_prefs"), {"rows": 10, "cols": 10})


def test_ranked_person_list_shows_face_crops_and_labels_faces(archive, client_for):
    ada = archive.persons["Ada"]
    client = client_for("annotator")
    select(client, ada)
    response = client.get(reverse("retrieval:ranked"))
    assert response.status_code == 200
    grid = response.context["grid"]
    assert grid["save_url"] == reverse("training:person_feedback")
    faces = {str(f.pk): f for f in archive.unlabelled["Ada"] + archive.ada_1985}
    keys = [item["key"] for item in grid["items"]]
    assert set(faces) <= set(keys)  # every unlabelled face of Ada is found
    for item in grid["items"]:
        face = Face.objects.get(pk=int(item["key"]))
        assert item["thumb"].endswith(face.thumbnail)  # the crop, not the keyframe
        assert item["full"].endswith(face.image.file)
    stranger_keys = {str(f.pk) for f in archive.unknown_unlabelled}
    assert len(stranger_keys & set(keys)) <= 0.2 * len(stranger_keys)


def test_feedback_on_a_person_result_becomes_a_face_label(archive, client_for):
    ada = archive.persons["Ada"]
    right, wrong = archive.unlabelled["Ada"][0], archive.unlabelled["Ada"][1]
    client = client_for("annotator")
    payload = {
        "category": ada.pk,
        "source": "feedback",
        "labels": [
            {"key": str(right.pk), "value": 1},
            {"key": str(wrong.pk), "value": -1},
            {"key": f"image-{wrong.image_id}", "value": 1},
        ],
    }
    response = client.post(
        reverse("training:person_feedback"), json.dumps(payload), content_type="application/json"
    )
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["created"] == 2 and [r["key"] for r in data["rejected"]] == [
        f"image-{wrong.image_id}"
    ]
    labels = {a.face_id: a for a in Annotation.objects.filter(category=ada, source="feedback")}
    assert labels[right.pk].value == Label.POSITIVE and labels[right.pk].image_id == right.image_id
    assert labels[wrong.pk].value == Label.NEGATIVE
    # The ranked page now shows the labels on the faces.
    select(client, ada)
    page = client.get(reverse("retrieval:ranked"))
    shown = {i["key"]: i["label"] for i in page.context["grid"]["items"]}
    assert shown[str(right.pk)] == 1 and shown[str(wrong.pk)] == -1
    # Researchers cannot label.
    denied = client_for("researcher").post(
        reverse("training:person_feedback"), json.dumps(payload), content_type="application/json"
    )
    assert denied.status_code == 403
    # A concept is not a person.
    payload["category"] = archive.studio.pk
    refused = client.post(
        reverse("training:person_feedback"), json.dumps(payload), content_type="application/json"
    )
    assert refused.status_code == 409
    assert Annotation.objects.filter(source=Source.FEEDBACK).count() == 2


def test_person_and_concept_in_the_1970s(archive, client_for):
    ada, studio = archive.persons["Ada"], archive.studio
    query = f"t=person:{ada.pk}:and:0.5&t=concept:{studio.pk}:and:0.5&year_from=1970&year_to=1979"
    client = client_for("researcher")
    response = client.get(reverse("retrieval:search") + "?" + query)
    assert response.status_code == 200
    assert not response.context["errors"]
    items = response.context["grid"]["items"]
    # Ada's 1975 keyframes scored "Studio": not Bert's, not 1985's.
    expected = {str(f.pk) for f in archive.unlabelled["Ada"][:4]}
    assert {i["key"] for i in items} == expected
    # The label category is the person: cells carry faces, labels go to faces.
    assert response.context["grid"]["save_url"] == reverse("training:person_feedback")
    # Without the year filter, Ada's 1985 studio keyframes join.
    wide = client.get(
        reverse("retrieval:search") + f"?t=person:{ada.pk}:and:0.5&t=concept:{studio.pk}:and:0.5"
    )
    assert len(wide.context["grid"]["items"]) == 6
    # NOT Ada: Bert's studio keyframes only.
    bert_query = f"t=concept:{studio.pk}:and:0.5&t=person:{ada.pk}:not:0.5"
    others = client.get(reverse("retrieval:search") + "?" + bert_query)
    images = {int(i["key"]) for i in others.context["grid"]["items"]}
    assert images == {f.image_id for f in archive.unlabelled["Bert"][:2]}


def test_person_export_has_face_boxes(archive, users, django_capture_on_commit_callbacks):
    ada = archive.persons["Ada"]
    job = start_job(
        "export_segments", {"category_id": ada.pk, "threshold": 0.0}, user=users["researcher"]
    )
    assert run_job(job.pk) == "succeeded"
    job.refresh_from_db()
    with zipfile.ZipFile(export_dir(job.pk) / job.result["file"]) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("faces.csv").decode())))
        assert "segments.csv" in zf.namelist()
    run = InferenceRun.objects.get(kind="person", is_published=True)
    expected = Prediction.objects.filter(run=run, category=ada)
    assert len(rows) == expected.count() > 0
    first = expected.order_by("image_id").first()
    row = next(r for r in rows if int(r["image_id"]) == first.image_id)
    assert int(row["face_id"]) == first.face_id
    assert [int(row[k]) for k in ("x1", "y1", "x2", "y2")] == Face.objects.get(pk=first.face_id).box


def test_hide_labelled_hides_results_whose_face_is_labelled(archive):
    """A person's results are labelled on their face: "hide labelled" looks at the face."""
    from retrieval.ranking import Filters, ranked_queryset

    ada = archive.persons["Ada"]
    run = InferenceRun.objects.get(kind="person", is_published=True)
    already = Annotation.objects.filter(category=ada, face__isnull=False).values("face_id")
    rows = list(
        Prediction.objects.filter(run=run, category=ada)
        .exclude(face=None)
        .exclude(face_id__in=already)
    )
    assert len(rows) >= 2
    labelled = rows[0]
    Annotation.objects.create(
        image_id=labelled.image_id,
        face_id=labelled.face_id,
        category=ada,
        value=Label.POSITIVE,
        source=Source.FEEDBACK,
        updated_at=labelled.run.created_at,
    )
    hidden = ranked_queryset(run.pk, ada.pk, Filters(hide_labelled=True), face_labels=True)
    ids = set(hidden.values_list("pk", flat=True))
    assert labelled.pk not in ids
    assert {r.pk for r in rows[1:]} <= ids
    # By image, the labelled face's keyframe would still be listed.
    by_image = ranked_queryset(run.pk, ada.pk, Filters(hide_labelled=True))
    assert labelled.pk in set(by_image.values_list("pk", flat=True))


def test_person_defaults_follow_the_models_rejection_threshold(archive, client_for):
    """A person export and a person term without a min score default to the published
    person run's score floor (the ranked page's threshold), not to fixed numbers; concepts
    keep theirs."""
    from django.http import QueryDict

    from retrieval.export import default_threshold
    from retrieval.query import DEFAULT_MIN_SCORE, parse_query

    ada, studio = archive.persons["Ada"], archive.studio
    run = InferenceRun.objects.get(kind="person", is_published=True)
    InferenceRun.objects.filter(pk=run.pk).update(score_floor=0.437)
    assert default_threshold("person") == pytest.approx(0.437)
    assert default_threshold("concept") == 0.7
    client = client_for("researcher")
    page = client.get(reverse("retrieval:export"), {"category": ada.pk})
    assert page.context["threshold"] == 43.7 and page.context["thresholds"]["concept"] == 70
    assert 'value="43.7"' in page.content.decode()
    # A posted person export without a threshold, and a person-only query, use it too.
    client.post(reverse("retrieval:export"), {"category": ada.pk, "threshold": ""})
    query = f"t=person:{ada.pk}:and:0.5"
    client.post(reverse("retrieval:export"), {"query": query, "threshold": ""})
    client.post(reverse("retrieval:export"), {"category": studio.pk, "threshold": ""})
    from viva.models import Job

    thresholds = [
        j.params["threshold"] for j in Job.objects.filter(kind="export_segments").order_by("pk")
    ]
    assert thresholds == pytest.approx([0.437, 0.437, 0.7])

    # Person terms without a min score: the floor; concepts: 0.5 as before.
    parsed = parse_query(QueryDict(f"t=person:{ada.pk}:and:&t=concept:{studio.pk}:and:"))
    assert [t.min_score for t in parsed.terms] == pytest.approx([0.437, DEFAULT_MIN_SCORE])
    # The search form's rows (no kind) learn it from the category on the redirect.
    form = client.get(
        reverse("retrieval:search"),
        {"term_op": ["and", "and"], "term_category": [ada.pk, studio.pk], "term_min": ["", ""]},
    )
    assert form.status_code == 302
    assert f"t=person:{ada.pk}:and:0.437" in form.url
    assert f"t=concept:{studio.pk}:and:0.5" in form.url
    search = client.get(reverse("retrieval:search"))
    assert search.context["person_min"] == 0.437
    assert 'placeholder="0.5 · person 0.437"' in search.content.decode()
