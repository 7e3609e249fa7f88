"""Upload / URL and similar images through HTTP.

* Upload / URL adds images to the selected category's candidates (optionally labelled), and
  bad input — not an image, a decompression bomb, a private or unreachable URL — is refused
  with a clear message and stores nothing (all or nothing per submission).
* Similar images: until the similarity issue plugs the archive index in, the page says the
  index is not built and shows no results. The plug-in contract (``VIVA_SIMILARITY_BACKEND``)
  is checked with a stand-in backend that returns fixed ids, as the real index will.
"""

from __future__ import annotations

import io
import json
import socket
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image as PILImage

from annotation import similarity
from annotation.models import Annotation, AnnotationEvent, Candidate, ImageOrigin
from tests import test_acquire_crawl as web
from viva.models import Collection, Image

# Fixtures shared with the web search tests (local fake web server, isolated var/, category).
fake_web = web.fake_web
isolated = web.isolated
category = web.category
annotator = web.annotator
png = web.png


def upload(name: str, content: bytes, content_type: str = "image/png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type=content_type)


def assert_nothing_stored() -> None:
    assert Image.objects.count() == 0
    assert ImageOrigin.objects.count() == 0
    assert Candidate.objects.count() == 0
    assert Annotation.objects.count() == 0


# --------------------------------------------------------------------------
# Upload / URL
# --------------------------------------------------------------------------


def test_upload_page(annotator, isolated, category):
    page = annotator.get(reverse("annotation:upload"))
    assert page.status_code == 200
    text = page.content.decode()
    assert "<title>Upload / URL" in text and category.name in text


def test_uploaded_images_become_labelled_candidates(annotator, isolated, category, users):
    response = annotator.post(
        reverse("annotation:upload"),
        {
            "files": [upload("a.png", png(1)), upload("b.png", png(2))],
            "urls": "",
            "label_positive": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    collection = Collection.objects.get(kind=Collection.Kind.UPLOAD)
    assert collection.images.count() == 2
    candidates = Candidate.objects.filter(category=category)
    assert candidates.count() == 2 and {c.source for c in candidates} == {"upload"}
    assert set(Annotation.objects.values_list("value", "source")) == {(1, "upload")}
    assert AnnotationEvent.objects.filter(source="upload").count() == 2
    origins = ImageOrigin.objects.all()
    assert {(o.source, o.category_id, o.user_id) for o in origins} == {
        ("upload", category.pk, users["annotator"].pk)
    }
    page = annotator.get(response["Location"])
    assert "2 image(s) added" in page.content.decode()


def test_upload_without_label_only_adds_candidates(annotator, isolated, category):
    response = annotator.post(
        reverse("annotation:upload"), {"files": [upload("a.png", png(3))], "urls": ""}
    )
    assert response.status_code == 302
    assert Candidate.objects.count() == 1 and Annotation.objects.count() == 0


def test_the_same_picture_twice_is_one_image(annotator, isolated):
    annotator.post(
        reverse("annotation:upload"),
        {
            "files": [upload("a.png", png(4)), upload("copy.png", png(4))],
            "urls": "",
        },
    )
    assert Image.objects.count() == 1 and Candidate.objects.count() == 1


def test_image_urls_are_fetched_safely_and_stored_with_their_origin(
    annotator, fake_web, isolated, category
):
    url = fake_web.url("/img/3.png")
    response = annotator.post(
        reverse("annotation:upload"), {"urls": f"{url}\n\n", "label_positive": "on"}
    )
    assert response.status_code == 302
    origin = ImageOrigin.objects.get()
    assert origin.url == url and origin.source == "upload" and origin.category == category
    assert Annotation.objects.get().value == 1
    assert fake_web.hits["/img/3.png"] == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("text_file", "not an image"),
        ("bomb_file", "too large"),
        ("file_url", "must start with http"),
        ("metadata_url", "private network"),
        ("redirect_url", "private network"),
        ("unreachable_url", "could not be reached"),
        ("html_url", "not an image"),
        ("missing_url", "HTTP 404"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_stored(annotator, fake_web, isolated, kind, expected):
    files = [upload("good.png", png(7))]  # a good image beside the bad one: all or nothing
    urls: list[str] = []
    if kind == "text_file":
        files.append(upload("notes.png", b"just some text", "image/png"))
    elif kind == "bomb_file":
        files.append(upload("bomb.png", web.png_bomb(20_000, 20_000)))
    elif kind == "file_url":
        urls.append("file:///etc/passwd")
    elif kind == "metadata_url":
        urls.append("http://169.254.169.254/latest/meta-data/")
    elif kind == "redirect_url":
        urls.append(fake_web.redirect("/go", "http://192.168.0.1/router.png"))
    elif kind == "unreachable_url":
        urls.append(f"http://127.0.0.1:{closed_port()}/x.png")
    elif kind == "html_url":
        urls.append(fake_web.static("/page", b"<html></html>", "text/html"))
    else:
        urls.append(fake_web.url("/nothing-here.png"))
    response = annotator.post(
        reverse("annotation:upload"),
        {
            "files": files,
            "urls": "\n".join(urls),
            "label_positive": "on",
        },
    )
    assert response.status_code == 400
    text = response.content.decode()
    assert "Nothing was stored" in text and expected in text
    assert_nothing_stored()


def test_empty_upload_form_asks_for_input(annotator, isolated):
    response = annotator.post(reverse("annotation:upload"), {"urls": ""})
    assert response.status_code == 400
    assert "Choose image files or paste image URLs" in response.content.decode()


# --------------------------------------------------------------------------
# Similar images: no index yet
# --------------------------------------------------------------------------


@pytest.fixture
def no_backend(settings):
    settings.VIVA_SIMILARITY_BACKEND = None
    similarity.reset_backend()
    yield
    similarity.reset_backend()


def test_similar_page_says_the_index_is_not_built(annotator, isolated, no_backend):
    page = annotator.get(reverse("annotation:similar"))
    assert page.status_code == 200
    text = page.content.decode()
    assert "<title>Similar images" in text
    assert "similarity index is not built yet" in text
    assert 'id="vgrid"' not in text  # no (fake) results


def test_find_more_like_these_without_index(annotator, isolated, category, no_backend):
    annotator.post(
        reverse("annotation:upload"), {"files": [upload("a.png", png(1))], "label_positive": "on"}
    )
    candidates = Candidate.objects.count()
    response = annotator.post(reverse("annotation:similar"), {"mode": "positives", "k": 50})
    assert response.status_code == 200
    text = response.content.decode()
    assert "similarity index is not built yet" in text and 'id="vgrid"' not in text
    assert Candidate.objects.count() == candidates


def test_find_more_like_these_needs_positives(annotator, isolated, no_backend):
    response = annotator.post(reverse("annotation:similar"), {"mode": "positives"})
    assert response.status_code == 400
    assert "has no positive images yet" in response.content.decode()


def test_query_by_upload_without_index_stores_nothing(annotator, fake_web, isolated, no_backend):
    response = annotator.post(
        reverse("annotation:similar"),
        {
            "mode": "images",
            "files": [upload("q.png", png(9))],
            "urls": fake_web.url("/img/1.png"),
        },
    )
    assert response.status_code == 200
    assert "similarity index is not built yet" in response.content.decode()
    assert_nothing_stored()


def test_bad_query_image_is_refused(annotator, isolated, no_backend):
    response = annotator.post(
        reverse("annotation:similar"),
        {
            "mode": "images",
            "files": [upload("q.png", b"GIF89a broken")],
        },
    )
    assert response.status_code == 400
    assert "q.png: The file is not an image." in response.content.decode()


def test_upload_page_can_send_its_images_as_a_query(annotator, isolated, no_backend):
    response = annotator.post(
        reverse("annotation:similar"),
        {
            "mode": "images",
            "files": [upload("q.png", png(9))],
            "urls": "",
            "label_positive": "on",
        },
    )
    assert response.status_code == 200
    assert "similarity index is not built yet" in response.content.decode()
    assert_nothing_stored()


def test_similar_images_raises_until_a_backend_exists(settings, no_backend):
    with pytest.raises(similarity.IndexNotBuilt):
        similarity.similar_images([1, 2], 10)
    assert similarity.index_status()[0] is False
    with pytest.raises(ValueError):
        similarity.similar_images([], 10)


# --------------------------------------------------------------------------
# The plug-in contract, with a stand-in backend (what the similarity issue provides)
# --------------------------------------------------------------------------


class StandInBackend:
    """Answers with fixed ids, the way the real index answers with its nearest images."""

    answer: list[tuple[int, float]] = []
    queries: list[Any] = []
    built = True

    def similar_images(self, query_images, k):
        StandInBackend.queries.append(list(query_images))
        return StandInBackend.answer[:k]

    def index_status(self):
        return StandInBackend.built, "" if StandInBackend.built else "Index still building."


@pytest.fixture
def stand_in(settings):
    settings.VIVA_SIMILARITY_BACKEND = "tests.test_acquire_query.StandInBackend"
    similarity.reset_backend()
    StandInBackend.queries, StandInBackend.built = [], True
    yield StandInBackend
    similarity.reset_backend()


def archive_images(n: int) -> list[Image]:
    collection = Collection.objects.create(name="keyframes")
    return [
        Image.objects.create(
            collection=collection,
            file=f"k/{i}.jpg",
            thumbnail=f"k/{i}_t.jpg",
            sha256=f"{i:064d}",
            width=320,
            height=240,
        )
        for i in range(n)
    ]


def grid_of(response) -> dict[str, Any]:
    return web.grid_of(response)


def test_results_of_the_index_are_shown_in_the_grid(annotator, isolated, category, stand_in):
    images = archive_images(4)
    stand_in.answer = [(images[2].pk, 3.0), (images[0].pk, 7.0), (images[3].pk, 11.0)]
    response = annotator.post(
        reverse("annotation:similar"),
        {
            "mode": "images",
            "files": [upload("q.png", png(9))],
            "k": 10,
        },
    )
    assert response.status_code == 302
    query = stand_in.queries[-1]
    assert len(query) == 1 and isinstance(query[0], PILImage.Image)
    grid = grid_of(annotator.get(response["Location"]))
    assert [i["key"] for i in grid["items"]] == [
        str(images[2].pk),
        str(images[0].pk),
        str(images[3].pk),
    ]
    assert grid["items"][0]["extra"] == "distance 3"
    assert grid["source"] == "similarity" and grid["save_url"] == reverse("annotation:save_labels")
    # Labels given on the results page are "similarity" labels.
    body = {
        "category": category.pk,
        "source": grid["source"],
        "labels": [{"key": grid["items"][0]["key"], "value": 1}],
    }
    saved = annotator.post(grid["save_url"], json.dumps(body), content_type="application/json")
    assert saved.status_code == 200 and saved.json()["saved"] == 1
    assert Annotation.objects.get().source == "similarity"
    # … and all results can become candidates at once, with their distance.
    query_id = response["Location"].split("query=")[1]
    added = annotator.post(
        reverse("annotation:similar"), {"action": "add_candidates", "query": query_id}
    )
    assert added.status_code == 302
    assert dict(Candidate.objects.values_list("image_id", "score")) == {
        images[2].pk: 3.0,
        images[0].pk: 7.0,
        images[3].pk: 11.0,
    }
    assert Image.objects.count() == 4  # the query image was not stored


def test_find_more_like_these_sends_the_positive_ids(annotator, isolated, category, stand_in):
    from annotation.labels import save_labels

    images = archive_images(3)
    save_labels(category, [(images[0].pk, 1), (images[1].pk, 1), (images[2].pk, -1)])
    stand_in.answer = [(images[2].pk, 1.0)]
    response = annotator.post(reverse("annotation:similar"), {"mode": "positives"})
    assert response.status_code == 302
    assert sorted(stand_in.queries[-1]) == sorted([images[0].pk, images[1].pk])


def test_similar_link_of_a_grid_image(annotator, isolated, stand_in):
    images = archive_images(2)
    stand_in.answer = [(images[1].pk, 0.0)]
    response = annotator.get(reverse("annotation:similar") + f"?image={images[0].pk}")
    assert response.status_code == 302 and stand_in.queries[-1] == [images[0].pk]
    grid = grid_of(annotator.get(response["Location"]))
    assert [i["key"] for i in grid["items"]] == [str(images[1].pk)]


def test_a_backend_whose_index_is_building_says_so(annotator, isolated, stand_in):
    stand_in.built = False
    archive_images(1)
    page = annotator.get(reverse("annotation:similar"))
    assert "Index still building." in page.content.decode()
    response = annotator.post(
        reverse("annotation:similar"),
        {
            "mode": "images",
            "files": [upload("q.png", png(9))],
        },
    )
    assert response.status_code == 200 and "Index still building." in response.content.decode()
    assert stand_in.queries == []


def test_to_pil_roundtrip() -> None:
    from annotation.acquisition import check_uploaded_bytes

    incoming = check_uploaded_bytes(png(1), "x.png")
    assert incoming.format == "PNG" and incoming.to_pil().size == (320, 240)
    assert isinstance(io.BytesIO(incoming.content).read(4), bytes)
