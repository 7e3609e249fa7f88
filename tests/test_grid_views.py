"""The label and review pages through HTTP: selection, tabs, paging, contract, query counts.

Also holds the helpers that make real (small) JPEG images for the other grid tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.urls import reverse
from PIL import Image as PILImage
from PIL import ImageDraw

from annotation.grid import candidate_page, naive_page_items, review_page
from annotation.labels import save_labels
from annotation.models import Annotation, Candidate, Category, Source
from viva.ingest.importer import import_image
from viva.media import write_jpeg, write_thumbnail
from viva.models import Collection, Image, Profile, Shot, Video

GRID_KEYS = {
    "items",
    "save_url",
    "category_id",
    "source",
    "page",
    "rows",
    "cols",
    "prefs_url",
    "readonly",
}
PAGE_KEYS = {"number", "num_pages", "total", "prev_url", "next_url", "page_urls"}


# --------------------------------------------------------------------------- helpers


def picture(i: int, size: tuple[int, int] = (64, 48)) -> PILImage.Image:
    """A small distinct picture: colour from ``i`` plus a drawn mark, so sha256s differ."""
    img = PILImage.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, (i * 53 + 80) % 256))
    draw = ImageDraw.Draw(img)
    draw.rectangle((4 + i % 20, 4, 20 + i % 20, 20 + (i // 20) % 20), fill=(255, 255, 255))
    draw.text((2, size[1] - 12), str(i), fill=(0, 0, 0))
    return img


def make_stills(
    n: int, tmp: Path, collection: Collection | None = None, start: int = 0
) -> list[Image]:
    """``n`` still images imported through the real importer (file + thumbnail)."""
    collection = (
        collection
        or Collection.objects.get_or_create(
            name="Stills", defaults={"kind": Collection.Kind.STILLS}
        )[0]
    )
    tmp.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(start, start + n):
        path = tmp / f"still-{i}.jpg"
        picture(i).save(path, "JPEG", quality=85)
        _, image = import_image(path, collection, original_name=f"still-{i}.jpg")
        images.append(image)
    return images


def make_keyframes(n_shots: int, per_shot: int = 2, title: str = "Evening news") -> list[Image]:
    """A video row with shots and keyframe images (files written under MEDIA_ROOT)."""
    collection, _ = Collection.objects.get_or_create(name="Archive")
    number = Video.objects.count() + 1
    video = Video.objects.create(
        collection=collection,
        title=title,
        file=f"videos/v{number}.mp4",
        sha256=f"{number:064x}",
        fps=25,
        n_frames=n_shots * 100,
        duration_ms=n_shots * 4000,
        width=64,
        height=48,
    )
    images = []
    for s in range(n_shots):
        shot = Shot.objects.create(
            video=video,
            number=s + 1,
            start_frame=s * 100,
            end_frame=s * 100 + 99,
            start_ms=s * 4000,
            end_ms=s * 4000 + 3960,
        )
        for k in range(per_shot):
            frame = s * 100 + 20 + k * 40
            pic = picture(number * 1000 + frame)
            rel = f"keyframes/v{number}/{frame}.jpg"
            write_jpeg(pic, rel)
            write_thumbnail(pic, f"keyframes/v{number}/{frame}_t.jpg")
            images.append(
                Image.objects.create(
                    collection=collection,
                    video=video,
                    shot=shot,
                    frame=frame,
                    time_ms=frame * 40,
                    file=rel,
                    thumbnail=f"keyframes/v{number}/{frame}_t.jpg",
                    sha256=f"{number:032x}{frame:032x}",
                    width=64,
                    height=48,
                )
            )
    return images


def add_candidates(category: Category, images: list[Image], source: str = Source.UPLOAD):
    Candidate.objects.bulk_create(
        [Candidate(category=category, image=im, source=source) for im in images]
    )


def select(client, category: Category) -> None:
    response = client.post(reverse("annotation:category_select"), {"category": category.pk})
    assert response.status_code == 302


def grid_of(response) -> dict:
    """The grid dict the page handed to grid.js (the json_script payload)."""
    html = response.content.decode()
    match = re.search(r'<script id="vgrid-data" type="application/json">(.*?)</script>', html, re.S)
    assert match, "no grid on the page"
    return json.loads(match.group(1))


def set_size(user, rows: int, cols: int) -> None:
    Profile.objects.update_or_create(user=user, defaults={"grid_rows": rows, "grid_cols": cols})


@pytest.fixture(autouse=True)
def _grid_cache(settings):
    """Exact counts in tests (a busy machine must not make a count "slow", hence cached)
    and no cached counts or anchors leaking from one test's category ids to the next."""
    from django.core.cache import cache

    settings.VIVA_GRID_SLOW_COUNT_SECONDS = 3600
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return tmp_path


@pytest.fixture
def concept(users) -> Category:
    return Category.objects.create(name="Brandenburg Gate", description="the gate in Berlin")


# --------------------------------------------------------------------------- selection


def test_label_page_without_selection_redirects_to_categories(client_for):
    client = client_for("annotator")
    response = client.get(reverse("annotation:label"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("annotation:categories"))
    assert "next=" in response["Location"]
    page = client.get(response["Location"])
    assert "Please select" in page.content.decode()


def test_review_page_without_selection_redirects(client_for):
    response = client_for("annotator").get(reverse("annotation:review") + "?value=negative")
    assert response.status_code == 302
    assert reverse("annotation:categories") in response["Location"]


def test_selected_category_shown_with_switcher(client_for, concept, media):
    other = Category.objects.create(name="Jeans")
    client = client_for("annotator")
    select(client, concept)
    html = client.get(reverse("annotation:label")).content.decode()
    assert 'class="selection-bar annotation-selection"' in html
    assert "Brandenburg Gate" in html and "the gate in Berlin" in html
    assert f'<option value="{other.pk}">Jeans</option>' in html
    # The quick switcher posts back to the current page.
    response = client.post(
        reverse("annotation:category_select"),
        {"category": other.pk, "next": reverse("annotation:label")},
    )
    assert response["Location"] == reverse("annotation:label")
    assert "Label “Jeans”" in client.get(reverse("annotation:label")).content.decode()


def test_deleted_selection_asks_again(client_for, concept):
    client = client_for("annotator")
    select(client, concept)
    concept.delete()
    response = client.get(reverse("annotation:label"))
    assert response.status_code == 302


# --------------------------------------------------------------------------- label page


def test_label_page_contract_and_candidate_tabs(client_for, users, concept, media):
    images = make_stills(5, media / "src")
    add_candidates(concept, images)
    save_labels(concept, [(images[0].pk, 1)], user=users["annotator"])
    client = client_for("annotator")
    select(client, concept)

    grid = grid_of(client.get(reverse("annotation:label")))
    assert GRID_KEYS <= set(grid)
    assert PAGE_KEYS <= set(grid["page"])
    assert grid["save_url"] == reverse("annotation:save_labels")
    assert grid["prefs_url"] == reverse("annotation:grid_prefs")
    assert grid["category_id"] == concept.pk and grid["source"] == "grid"
    assert grid["readonly"] is False
    # Default tab: unlabelled candidates only, newest first.
    assert [it["key"] for it in grid["items"]] == [str(im.pk) for im in images[1:]][::-1]
    assert grid["page"]["total"] == 4
    item = grid["items"][0]
    assert item["thumb"].startswith("/media/thumbs/") and item["full"].startswith("/media/images/")
    assert item["caption"] == "still-4.jpg" and item["label"] is None

    grid = grid_of(client.get(reverse("annotation:label") + "?tab=all"))
    labels = {it["key"]: it["label"] for it in grid["items"]}
    assert labels[str(images[0].pk)] == 1 and grid["page"]["total"] == 5


def test_thumbnails_are_served(client_for, concept, media):
    images = make_stills(1, media / "src")
    add_candidates(concept, images)
    client = client_for("annotator")
    select(client, concept)
    item = grid_of(client.get(reverse("annotation:label")))["items"][0]
    response = client.get(item["thumb"])
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert body[:2] == b"\xff\xd8"  # a JPEG


def test_archive_tab_filters_by_collection_and_video(client_for, concept, media):
    news = make_keyframes(3, title="News 1989")
    sport = make_keyframes(2, title="Sport 1990")
    make_stills(2, media / "src")
    client = client_for("annotator")
    select(client, concept)
    url = reverse("annotation:label") + "?tab=archive"

    grid = grid_of(client.get(url))
    assert grid["page"]["total"] == 6 + 4 + 2
    collection = news[0].collection_id
    response = client.get(f"{url}&collection={collection}")
    assert "News 1989" in response.content.decode()  # the video select
    assert grid_of(response)["page"]["total"] == 10
    grid = grid_of(client.get(f"{url}&collection={collection}&video={sport[0].video_id}"))
    assert [it["key"] for it in grid["items"]] == [str(im.pk) for im in sport]
    item = grid["items"][0]
    shot = sport[0].shot
    assert item["video"] == {
        "src": "/media/" + sport[0].video.file,
        "start": shot.start_ms / 1000,
        "end": shot.end_ms / 1000,
    }
    assert item["caption"].startswith("Sport 1990 · ")
    assert item["link"] == reverse("archive:video", args=[sport[0].video_id])
    # Only images without a label for this category.
    save_labels(concept, [(sport[0].pk, -1)])
    grid = grid_of(client.get(f"{url}&video={sport[0].video_id}&unlabelled=1"))
    assert [it["key"] for it in grid["items"]] == [str(i.pk) for i in sport[1:]]


def test_keyset_paging_never_skips_after_labelling(client_for, users, concept, media):
    """Saving a page of unlabelled candidates must not shift the next page past rows."""
    images = make_stills(10, media / "src")
    add_candidates(concept, images)
    set_size(users["annotator"], 2, 2)  # 4 per page
    client = client_for("annotator")
    select(client, concept)
    first = grid_of(client.get(reverse("annotation:label")))
    assert first["page"]["num_pages"] == 3 and first["page"]["total"] == 10
    assert "after=" in first["page"]["next_url"]
    keys1 = [it["key"] for it in first["items"]]
    # Label the whole first page (as `s` would), then follow "next".
    save_labels(concept, [(int(k), 1) for k in keys1], user=users["annotator"])
    second = grid_of(client.get(first["page"]["next_url"]))
    keys2 = [it["key"] for it in second["items"]]
    assert second["page"]["number"] == 2
    expected = [str(im.pk) for im in reversed(images)]
    assert keys1 == expected[:4] and keys2 == expected[4:8]
    third = grid_of(client.get(second["page"]["next_url"]))
    assert [it["key"] for it in third["items"]] == expected[8:]
    assert third["page"]["next_url"] is None
    # Last page of "unlabelled": save-and-next reloads the list.
    assert third["save_next_url"].endswith("?tab=unlabelled")
    # Page numbers (OFFSET) keep the other filters.
    other = grid_of(client.get(reverse("annotation:label") + "?tab=all&page=2"))
    by_number = dict(other["page"]["page_urls"])
    assert sorted(by_number) == [1, 2, 3] and all("tab=all" in u for u in by_number.values())
    assert "tab=all" in other["page"]["prev_url"] and "tab=all" in other["page"]["next_url"]


def test_page_number_clamped_and_garbage_tolerated(client_for, users, concept, media):
    add_candidates(concept, make_stills(3, media / "src"))
    set_size(users["annotator"], 1, 2)
    client = client_for("annotator")
    select(client, concept)
    grid = grid_of(client.get(reverse("annotation:label") + "?page=99&after=x_y"))
    assert grid["page"]["number"] == 2 and len(grid["items"]) == 1
    grid = grid_of(client.get(reverse("annotation:label") + "?page=abc&tab=nope"))
    assert grid["page"]["number"] == 1


def test_empty_label_page_points_to_acquisition(client_for, concept):
    client = client_for("annotator")
    select(client, concept)
    response = client.get(reverse("annotation:label"))
    grid = grid_of(response)
    assert grid["items"] == [] and grid["page"]["total"] == 0
    assert "Archive</a> tab" in response.content.decode()


# --------------------------------------------------------------------------- review


def test_review_newest_first_and_per_value(client_for, users, concept, media):
    images = make_stills(6, media / "src")
    for im in images[:4]:
        save_labels(concept, [(im.pk, 1)], user=users["annotator"])
    save_labels(concept, [(images[4].pk, -1), (images[5].pk, 0)], user=users["trainer"])
    client = client_for("annotator")
    select(client, concept)
    response = client.get(reverse("annotation:review"))
    grid = grid_of(response)
    assert grid["source"] == "review"
    assert [it["key"] for it in grid["items"]] == [str(im.pk) for im in images[3::-1]]
    assert all(it["label"] == 1 for it in grid["items"])
    assert grid["items"][0]["extra"].startswith("annotator")
    html = response.content.decode()
    assert re.search(r"Positive <span class=\"count\">4</span>", html)
    grid = grid_of(client.get(reverse("annotation:review") + "?value=negative"))
    assert [it["key"] for it in grid["items"]] == [str(images[4].pk)]
    grid = grid_of(client.get(reverse("annotation:review") + "?value=neutral"))
    assert [it["key"] for it in grid["items"]] == [str(images[5].pk)]


def test_review_correction_moves_the_image(client_for, users, concept, media):
    images = make_stills(3, media / "src")
    save_labels(concept, [(im.pk, 1) for im in images], user=users["annotator"])
    client = client_for("annotator")
    select(client, concept)
    grid = grid_of(client.get(reverse("annotation:review") + "?value=positive"))
    key = grid["items"][1]["key"]
    response = client.post(
        grid["save_url"],
        {"category": concept.pk, "source": grid["source"], "labels": [{"key": key, "value": -1}]},
        content_type="application/json",
    )
    assert response.status_code == 200 and response.json()["saved"] == 1
    positives = grid_of(client.get(reverse("annotation:review") + "?value=positive"))
    negatives = grid_of(client.get(reverse("annotation:review") + "?value=negative"))
    assert key not in [it["key"] for it in positives["items"]]
    assert [it["key"] for it in negatives["items"]] == [key]
    assert Annotation.objects.get(image_id=int(key)).source == "review"


def test_review_keyset_paging_after_corrections(client_for, users, concept, media):
    images = make_stills(6, media / "src")
    for im in images:
        save_labels(concept, [(im.pk, 1)], user=users["annotator"])
    set_size(users["annotator"], 1, 2)
    client = client_for("annotator")
    select(client, concept)
    first = grid_of(client.get(reverse("annotation:review")))
    # Correct both images of page 1; the next page must still start at the 3rd newest.
    save_labels(concept, [(int(it["key"]), -1) for it in first["items"]], source="review")
    second = grid_of(client.get(first["page"]["next_url"]))
    assert [it["key"] for it in second["items"]] == [str(images[3].pk), str(images[2].pk)]


# --------------------------------------------------------------------------- roles


def test_researcher_cannot_open_label_or_review(client_for, concept):
    client = client_for("researcher")
    select(client, concept)
    assert client.get(reverse("annotation:label")).status_code == 403
    assert client.get(reverse("annotation:review")).status_code == 403


def test_researcher_grid_would_be_readonly(rf, users, concept, media):
    """Pages that researchers may see (retrieval) get a read-only grid from build_grid."""
    from annotation.grid import GridPage
    from annotation.views.grid import build_grid

    request = rf.get("/x/")
    request.user = users["researcher"]
    grid = build_grid(request, GridPage([], 1, 9, 0), concept, source="feedback", rows=3, cols=3)
    assert grid["readonly"] is True
    request.user = users["annotator"]
    assert (
        build_grid(request, GridPage([], 1, 9, 0), concept, source="feedback", rows=3, cols=3)[
            "readonly"
        ]
        is False
    )


# --------------------------------------------------------------------------- query counts


def _page_queries(client, url, django_assert_max_num_queries) -> int:
    with django_assert_max_num_queries(15) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured.captured_queries)


@pytest.mark.parametrize(
    "url_suffix",
    [
        ("label", ""),
        ("label", "?tab=all"),
        ("label", "?tab=archive&unlabelled=1"),
        ("review", "?value=positive"),
    ],
)
def test_query_count_constant_for_page_sizes(
    url_suffix, client_for, users, concept, media, django_assert_max_num_queries
):
    name, suffix = url_suffix
    images = make_stills(60, media / "src") + make_keyframes(25, per_shot=2)
    add_candidates(concept, images)
    save_labels(concept, [(im.pk, 1) for im in images[:110]], user=users["annotator"])
    Candidate.objects.filter(image__in=images[105:]).delete()
    add_candidates(concept, images[105:])  # some unlabelled candidates too
    client = client_for("annotator")
    select(client, concept)
    url = reverse(f"annotation:{name}") + suffix
    counts = {}
    for rows, cols in ((3, 3), (10, 10)):
        set_size(users["annotator"], rows, cols)
        counts[rows * cols] = _page_queries(client, url, django_assert_max_num_queries)
    assert counts[9] == counts[100], counts
    grid = grid_of(client.get(url))
    assert len(grid["items"]) == min(100, grid["page"]["total"])


def test_query_service_functions_directly(concept, media, django_assert_num_queries):
    """A page costs three queries: count, the page's keys (index-only), the rows."""
    images = make_keyframes(10, per_shot=3)
    add_candidates(concept, images)
    save_labels(concept, [(im.pk, 1) for im in images[:20]])
    with django_assert_num_queries(3):
        page = candidate_page(concept, page=1, per_page=12, unlabelled_only=False)
    assert len(page.items) == 12 and page.total == 30 and page.next_cursor
    with django_assert_num_queries(3):
        page = review_page(concept, 1, page=2, per_page=12)
    assert len(page.items) == 8 and page.number == 2 and page.next_cursor is None
    # The naive baseline gives the same items (with one query per image).
    naive = naive_page_items(Image.objects.all(), concept, per_page=12)
    assert [it["label"] for it in naive] == [1] * 12


def test_deep_pages_through_anchors_match_offset(concept, media, monkeypatch):
    """Anchored lists (archive, unlabelled) jump to deep pages via cached anchors; with
    nothing changed in between, every page equals the plain OFFSET page."""
    from django.core.cache import cache

    import annotation.grid as grid_module
    from annotation.grid import archive_page

    images = make_keyframes(12, per_shot=2)  # 24 images
    save_labels(concept, [(im.pk, 1) for im in images[::3]])
    monkeypatch.setattr(grid_module, "ANCHOR_EVERY", 4)
    cache.clear()
    ids = [im.pk for im in images]
    unlabelled = [im.pk for k, im in enumerate(images) if k % 3]
    for per_page in (3, 5):
        for number in range(1, 7):
            page = archive_page(concept, page=number, per_page=per_page)
            start = (page.number - 1) * per_page
            assert [int(it["key"]) for it in page.items] == ids[start : start + per_page]
            page = archive_page(concept, page=number, per_page=per_page, unlabelled_only=True)
            start = (page.number - 1) * per_page
            assert [int(it["key"]) for it in page.items] == unlabelled[start : start + per_page]
            assert page.total == 16
    # Unfiltered "unlabelled" counts without an anti-join: all images minus labelled ones.
    assert archive_page(concept, unlabelled_only=True, per_page=5).total == 16


def test_slow_counts_are_cached_and_marked_approximate(client_for, concept, media, settings):
    settings.VIVA_GRID_SLOW_COUNT_SECONDS = 0  # every count counts as slow
    images = make_stills(4, media / "src")
    add_candidates(concept, images[:2])
    client = client_for("annotator")
    select(client, concept)
    first = grid_of(client.get(reverse("annotation:label") + "?tab=all"))
    assert first["page"]["total"] == 2 and first["page"]["approximate"] is False
    add_candidates(concept, images[2:])
    response = client.get(reverse("annotation:label") + "?tab=all")
    again = grid_of(response)
    # The cached count lags (for at most VIVA_GRID_CACHE_SECONDS) and says so …
    assert again["page"]["total"] == 2 and again["page"]["approximate"] is True
    # … but the rows are always current, and the page count follows the look-ahead row.
    assert len(again["items"]) == 4
