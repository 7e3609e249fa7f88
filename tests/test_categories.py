"""Categories: overview with counts, create, edit, delete (archiving), select, roles."""

from __future__ import annotations

import pytest
from django.urls import reverse

from annotation.labels import save_labels
from annotation.models import AnnotationEvent, Candidate, Category
from annotation.selection import SESSION_KEY
from tests.test_grid_views import _grid_cache, add_candidates, make_stills, select  # noqa: F401 (autouse fixture)


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return tmp_path


def test_overview_counts_per_kind(client_for, users, media):
    gate = Category.objects.create(name="Brandenburg Gate", description="Berlin")
    jeans = Category.objects.create(name="jeans")
    merkel = Category.objects.create(name="Angela Merkel", kind="person")
    images = make_stills(6, media / "src")
    save_labels(gate, [(images[0].pk, 1), (images[1].pk, 1), (images[2].pk, -1), (images[3].pk, 0)])
    save_labels(jeans, [(images[0].pk, -1)])
    save_labels(merkel, [(images[5].pk, 1)])
    client = client_for("researcher")
    response = client.get(reverse("annotation:categories"))
    assert response.status_code == 200
    rows = {c.name: (c.n_pos, c.n_neg, c.n_neu, c.n_total) for c in response.context["categories"]}
    assert rows == {"Brandenburg Gate": (2, 1, 1, 4), "jeans": (0, 1, 0, 1)}
    html = response.content.decode()
    assert "Berlin" in html and "Angela Merkel" not in html
    # Researchers see the table but no edit/delete buttons.
    assert "New concept" not in html and ">Delete<" not in html
    persons = client.get(reverse("annotation:categories") + "?kind=person")
    assert [c.name for c in persons.context["categories"]] == ["Angela Merkel"]


def test_overview_query_count_does_not_grow_with_categories(
    client_for, users, media, django_assert_max_num_queries
):
    images = make_stills(3, media / "src")
    client = client_for("trainer")

    def measure() -> int:
        with django_assert_max_num_queries(12) as captured:
            assert client.get(reverse("annotation:categories")).status_code == 200
        return len(captured.captured_queries)

    Category.objects.create(name="one")
    save_labels(Category.objects.get(name="one"), [(images[0].pk, 1)])
    few = measure()
    for i in range(25):
        category = Category.objects.create(name=f"concept {i}")
        save_labels(category, [(im.pk, (-1, 0, 1)[(i + k) % 3]) for k, im in enumerate(images)])
    assert measure() == few


def test_create_selects_and_rejects_duplicates(client_for, users):
    client = client_for("annotator")
    response = client.get(reverse("annotation:category_create") + "?kind=person")
    assert response.status_code == 200
    assert response.context["form"].initial["kind"] == "person"
    response = client.post(
        reverse("annotation:category_create"),
        {"kind": "concept", "name": "  Bakery   (inside) ", "description": ""},
    )
    assert response.status_code == 302
    category = Category.objects.get()
    assert category.name == "Bakery (inside)" and category.created_by == users["annotator"]
    assert client.session[SESSION_KEY]["current"] == category.pk
    response = client.post(
        reverse("annotation:category_create"), {"kind": "concept", "name": "bakery (INSIDE)"}
    )
    assert response.status_code == 200
    assert "exists already" in response.content.decode()
    # The same name as a person is fine.
    client.post(
        reverse("annotation:category_create"), {"kind": "person", "name": "Bakery (inside)"}
    )
    assert Category.objects.count() == 2


def test_edit_renames_and_keeps_labels(client_for, media):
    category = Category.objects.create(name="Gate")
    image = make_stills(1, media / "src")[0]
    save_labels(category, [(image.pk, 1)])
    client = client_for("annotator")
    url = reverse("annotation:category_edit", args=[category.pk])
    assert "kind" not in client.get(url).context["form"].fields
    response = client.post(url, {"name": "Brandenburg Gate", "description": "The gate."})
    assert response.status_code == 302
    category.refresh_from_db()
    assert (category.name, category.description) == ("Brandenburg Gate", "The gate.")
    assert category.annotations.count() == 1
    Category.objects.create(name="Reichstag")
    response = client.post(url, {"name": "reichstag", "description": ""})
    assert "exists already" in response.content.decode()
    assert client.get(reverse("annotation:category_edit", args=[999])).status_code == 404


def test_delete_confirms_counts_and_archives(client_for, users, media):
    category = Category.objects.create(name="Doomed")
    keep = Category.objects.create(name="Kept")
    images = make_stills(4, media / "src")
    save_labels(
        category,
        [(images[0].pk, 1), (images[1].pk, -1), (images[2].pk, 0)],
        user=users["annotator"],
    )
    save_labels(keep, [(images[0].pk, 1)])
    add_candidates(category, images)
    client = client_for("trainer")
    select(client, category)
    url = reverse("annotation:category_delete", args=[category.pk])
    page = client.get(url).content.decode()
    assert "3 annotations" in page and "1 positive, 1 negative, 1 neutral" in page
    assert "4 candidate images" in page
    before = AnnotationEvent.objects.count()
    response = client.post(url)
    assert response.status_code == 302
    assert not Category.objects.filter(pk=category.pk).exists()
    assert not Candidate.objects.exists()
    archived = AnnotationEvent.objects.filter(category_id=category.pk, source="delete")
    assert AnnotationEvent.objects.count() == before + 3
    assert sorted(archived.values_list("old_value", flat=True)) == [-1, 0, 1]
    assert set(archived.values_list("new_value", flat=True)) == {None}
    assert set(archived.values_list("category_name", flat=True)) == {"Doomed"}
    assert set(archived.values_list("user__username", flat=True)) == {"trainer"}
    assert keep.annotations.count() == 1
    # The selection is gone: the label page asks for a new one.
    assert client.get(reverse("annotation:label")).status_code == 302
    messages = [str(m) for m in client.get(reverse("annotation:categories")).context["messages"]]
    assert any("kept in the event log" in m for m in messages)


@pytest.mark.parametrize("role", ["researcher", "annotator"])
def test_delete_needs_trainer(client_for, role):
    category = Category.objects.create(name="Safe")
    client = client_for(role)
    url = reverse("annotation:category_delete", args=[category.pk])
    assert client.get(url).status_code == 403
    assert client.post(url).status_code == 403
    assert Category.objects.filter(pk=category.pk).exists()


def test_researcher_cannot_create_or_edit(client_for):
    category = Category.objects.create(name="Fixed")
    client = client_for("researcher")
    assert (
        client.post(
            reverse("annotation:category_create"), {"kind": "concept", "name": "x"}
        ).status_code
        == 403
    )
    assert (
        client.post(
            reverse("annotation:category_edit", args=[category.pk]), {"name": "y"}
        ).status_code
        == 403
    )
    assert Category.objects.get().name == "Fixed"


def test_select_keeps_one_per_kind_and_checks_next(client_for):
    concept = Category.objects.create(name="Gate")
    person = Category.objects.create(name="Someone", kind="person")
    client = client_for("researcher")
    url = reverse("annotation:category_select")
    response = client.post(url, {"category": concept.pk, "next": "https://evil.example/"})
    assert response["Location"] == reverse("annotation:categories") + "?kind=concept"
    client.post(url, {"category": person.pk, "next": "/annotate/review/"})
    state = client.session[SESSION_KEY]
    assert state == {"current": person.pk, "concept": concept.pk, "person": person.pk}
    response = client.post(url, {"category": 12345})
    assert response.status_code == 302
    assert client.post(url, {"category": "abc"}).status_code == 302
    assert client.get(url).status_code == 405


def test_get_selected_by_kind(rf, client_for):
    from annotation.selection import get_selected

    concept = Category.objects.create(name="Gate")
    person = Category.objects.create(name="Someone", kind="person")
    client = client_for("annotator")
    select(client, concept)
    select(client, person)
    request = rf.get("/")
    request.session = client.session
    assert get_selected(request) == person
    assert get_selected(request, "concept") == concept
    assert get_selected(request, "person") == person


def test_categories_page_offers_selection_for_next(client_for):
    Category.objects.create(name="Gate")
    client = client_for("annotator")
    redirect = client.get(reverse("annotation:review") + "?value=neutral")["Location"]
    page = client.get(redirect).content.decode()
    assert 'name="next" value="/annotate/review/?value=neutral"' in page
