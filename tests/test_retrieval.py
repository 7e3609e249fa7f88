"""Ranked retrieval, combined queries and the retrieval pages (issue 5, items 2 and 3).

Predictions are made by hand (a ModelVersion, a published InferenceRun, Prediction rows)
so the expected rankings can be computed on paper; the inference job is not involved.
The archive of :func:`make_archive`:

    video v1 "Evening News" (1975, collection c1): shot s1 0–2000 ms: i1 @400, i2 @1200
                                                   shot s2 2000–4000: i3 @2400, i4 @3200
    video v2 "Sports Report" (1985, collection c2): shot s3 0–2000: i5 @500, i6 @1500

    scores   i1    i2    i3    i4    i5    i6
    A       .90   .80   .70   .30   .95   .60
    B       .60   .90   .20    –    .80   .70
    C        –    .90    –     –    .55    –
"""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.http import QueryDict
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from PIL import Image as PILImage

from annotation.models import Annotation, AnnotationEvent, Category
from annotation.selection import SESSION_KEY
from retrieval.models import InferenceRun, Prediction
from retrieval.query import Filters, Query, Term, parse_query
from retrieval.ranking import QueryError, combined_page, published_runs, ranked_page
from training.models import ModelVersion
from viva.media import write_jpeg
from viva.models import Collection, Image, Profile, Shot, Video

SCORES = {
    "A": {1: 0.90, 2: 0.80, 3: 0.70, 4: 0.30, 5: 0.95, 6: 0.60},
    "B": {1: 0.60, 2: 0.90, 3: 0.20, 5: 0.80, 6: 0.70},
    "C": {2: 0.90, 5: 0.55},
}


def make_run(kind: str = "concept", version: int = 1, published: bool = True) -> InferenceRun:
    mv = ModelVersion.objects.create(
        kind=kind, version=version, directory=f"{kind}/{version}", weights_path="w.pt"
    )
    return InferenceRun.objects.create(
        kind=kind,
        model_version=mv,
        status=InferenceRun.Status.COMPLETE,
        score_floor=0.1,
        is_published=published,
    )


def make_archive(write_files: bool = False) -> dict:
    """The archive of the module docstring; ``o["i"][1]`` is image i1 and so on."""
    c1 = Collection.objects.create(name="Archive one")
    c2 = Collection.objects.create(name="Archive two")
    o: dict = {"c1": c1, "c2": c2, "i": {}}
    layout = [
        (
            "v1",
            c1,
            "Evening News",
            1975,
            [(0, 2000, [(1, 400), (2, 1200)]), (2000, 4000, [(3, 2400), (4, 3200)])],
        ),
        ("v2", c2, "Sports Report", 1985, [(0, 2000, [(5, 500), (6, 1500)])]),
    ]
    for key, coll, title, year, shots in layout:
        video = Video.objects.create(
            collection=coll,
            title=title,
            file=f"videos/{key}.mp4",
            sha256=key * 32,
            year=year,
            fps=25,
            n_frames=100,
            duration_ms=4000,
            width=64,
            height=48,
        )
        o[key] = video
        for number, (start, end, frames) in enumerate(shots, start=1):
            shot = Shot.objects.create(
                video=video,
                number=number,
                start_frame=start // 40,
                end_frame=end // 40 - 1,
                start_ms=start,
                end_ms=end,
            )
            o[f"{key}s{number}"] = shot
            for n, time_ms in frames:
                rel = f"kf/{key}/{n}.jpg"
                if write_files:
                    write_jpeg(PILImage.new("RGB", (64, 48), (30 * n, 80, 120)), rel)
                o["i"][n] = Image.objects.create(
                    collection=coll,
                    video=video,
                    shot=shot,
                    frame=time_ms // 40,
                    time_ms=time_ms,
                    file=rel,
                    # home.html shows ``thumbnail`` without falling back to ``file``.
                    thumbnail=rel,
                    sha256=f"{n:064x}",
                    width=64,
                    height=48,
                )
    o["run"] = make_run()
    for name, scores in SCORES.items():
        category = Category.objects.create(name=f"Concept {name}")
        o[name] = category
        Prediction.objects.bulk_create(
            Prediction(run=o["run"], category=category, image=o["i"][n], score=s)
            for n, s in scores.items()
        )
    return o


@pytest.fixture
def arch(db):
    return make_archive()


def ids(arch, grid_page) -> list[int]:
    """Image numbers (1–6) of a page's items, in order."""
    back = {im.pk: n for n, im in arch["i"].items()}
    return [back[int(item["key"])] for item in grid_page.items]


def ranked(arch, category="A", **filters):
    return ranked_page(arch["run"], arch[category], Filters(**filters), per_page=20)


# --------------------------------------------------------------------------- ranking


def test_ranked_descending_and_ascending(arch):
    page = ranked(arch)
    assert ids(arch, page) == [5, 1, 2, 3, 6, 4]
    assert page.total == 6
    assert page.items[0]["extra"] == "score 0.95"
    assert ids(arch, ranked(arch, descending=False)) == [4, 6, 3, 2, 1, 5]


def test_ranked_filters(arch):
    assert ids(arch, ranked(arch, min_score=0.65)) == [5, 1, 2, 3]
    assert ids(arch, ranked(arch, collection_id=arch["c2"].pk)) == [5, 6]
    assert ids(arch, ranked(arch, title="news")) == [1, 2, 3, 4]
    assert ids(arch, ranked(arch, title="NEWS%")) == []  # % is literal, not a wildcard
    assert ids(arch, ranked(arch, year_from=1980)) == [5, 6]
    assert ids(arch, ranked(arch, year_to=1980)) == [1, 2, 3, 4]
    assert ids(arch, ranked(arch, year_from=1970, year_to=1990, min_score=0.75)) == [5, 1, 2]


def test_hide_labelled_hides_only_labels_of_this_category(arch):
    Annotation.objects.create(
        image=arch["i"][1], category=arch["A"], value=-1, updated_at="2026-01-01T00:00Z"
    )
    Annotation.objects.create(
        image=arch["i"][2], category=arch["B"], value=1, updated_at="2026-01-01T00:00Z"
    )
    page = ranked(arch)
    assert {item["key"]: item["label"] for item in page.items}[str(arch["i"][1].pk)] == -1
    assert ids(arch, ranked(arch, hide_labelled=True)) == [5, 2, 3, 6, 4]


def test_group_by_shot_keeps_the_best_keyframe_per_shot(arch):
    assert ids(arch, ranked(arch, group_by_shot=True)) == [5, 1, 3]
    # B: s1's best is i2 (.9), s3's i5 (.8), s2's only prediction is i3 (.2).
    assert ids(arch, ranked(arch, "B", group_by_shot=True)) == [2, 5, 3]
    assert ids(arch, ranked(arch, "B", group_by_shot=True, min_score=0.5)) == [2, 5]


def test_keyset_paging_walks_the_whole_list(arch):
    seen, after, number = [], None, 1
    for _ in range(5):
        page = ranked_page(arch["run"], arch["A"], Filters(), page=number, per_page=2, after=after)
        seen += ids(arch, page)
        if page.next_cursor is None:
            break
        after, number = page.next_cursor, number + 1
    assert seen == [5, 1, 2, 3, 6, 4]
    # Offset paging gives the same pages.
    assert ids(arch, ranked_page(arch["run"], arch["A"], Filters(), page=2, per_page=2)) == [2, 3]


def test_only_the_published_run_is_read(arch):
    other = make_run(version=2, published=False)
    Prediction.objects.create(run=other, category=arch["A"], image=arch["i"][4], score=0.99)
    assert ids(arch, ranked(arch))[0] == 5
    assert published_runs() == {"concept": arch["run"]}


# --------------------------------------------------------------------------- combined


def combined(arch, *terms, **filters):
    query = Query(tuple(Term(arch[name].pk, op, m) for name, op, m in terms), Filters(**filters))
    return combined_page(query, published_runs(), label_category_id=arch["A"].pk, per_page=20)


def combined_scores(arch, page) -> list[tuple[int, str]]:
    return list(zip(ids(arch, page), [it["extra"] for it in page.items], strict=True))


def test_and_is_the_minimum(arch):
    page = combined(arch, ("A", "and", 0.5), ("B", "and", 0.5))
    assert combined_scores(arch, page) == [
        (2, "score 0.80"),
        (5, "score 0.80"),
        (1, "score 0.60"),
        (6, "score 0.60"),
    ]


def test_or_is_the_maximum(arch):
    page = combined(arch, ("A", "or", 0.85), ("C", "or", 0.85))
    assert combined_scores(arch, page) == [(5, "score 0.95"), (1, "score 0.90"), (2, "score 0.90")]


def test_not_excludes(arch):
    page = combined(arch, ("A", "and", 0.5), ("C", "not", 0.5))
    assert combined_scores(arch, page) == [(1, "score 0.90"), (3, "score 0.70"), (6, "score 0.60")]
    # NOT with a higher minimum lets i5 (C .55) through.
    page = combined(arch, ("A", "and", 0.5), ("C", "not", 0.6))
    assert ids(arch, page) == [5, 1, 3, 6]


def test_and_with_or_group(arch):
    page = combined(arch, ("A", "and", 0.5), ("B", "or", 0.5), ("C", "or", 0.5))
    assert combined_scores(arch, page) == [
        (2, "score 0.80"),
        (5, "score 0.80"),
        (1, "score 0.60"),
        (6, "score 0.60"),
    ]


def test_combined_metadata_order_and_hide_labelled(arch):
    page = combined(arch, ("A", "and", 0.5), ("B", "and", 0.5), year_to=1980)
    assert ids(arch, page) == [2, 1]
    page = combined(arch, ("A", "and", 0.5), ("B", "and", 0.5), title="sports")
    assert ids(arch, page) == [5, 6]
    page = combined(arch, ("A", "and", 0.5), ("B", "and", 0.5), descending=False)
    assert ids(arch, page) == [1, 6, 2, 5]
    page = combined(arch, ("A", "and", 0.5), ("B", "and", 0.5), min_score=0.7)
    assert ids(arch, page) == [2, 5]
    Annotation.objects.create(
        image=arch["i"][2], category=arch["A"], value=1, updated_at="2026-01-01T00:00Z"
    )
    page = combined(arch, ("A", "and", 0.5), ("B", "and", 0.5), hide_labelled=True)
    assert ids(arch, page) == [5, 1, 6]


def test_not_alone_and_missing_person_run_are_errors(arch):
    with pytest.raises(QueryError, match="NOT alone"):
        combined(arch, ("C", "not", 0.5))
    person = Category.objects.create(name="Somebody", kind="person")
    query = Query((Term(person.pk, "and", 0.5, "person"),))
    with pytest.raises(QueryError, match="person"):
        combined_page(query, published_runs())


def test_person_terms_use_the_person_run(arch):
    person = Category.objects.create(name="Somebody", kind="person")
    run = make_run("person", 1)
    Prediction.objects.create(run=run, category=person, image=arch["i"][1], score=0.9)
    Prediction.objects.create(run=run, category=person, image=arch["i"][5], score=0.9)
    query = Query((Term(arch["A"].pk, "and", 0.5), Term(person.pk, "not", 0.5, "person")))
    assert ids(arch, combined_page(query, published_runs(), per_page=20)) == [2, 3, 6]


# --------------------------------------------------------------------------- URLs


def test_query_url_round_trip():
    query = Query(
        (Term(3, "and", 0.5), Term(4, "or", 0.75), Term(9, "not", 0.6, "person")),
        Filters(
            min_score=0.2,
            hide_labelled=True,
            collection_id=2,
            title="news & sport",
            year_from=1970,
            year_to=1989,
            descending=False,
        ),
    )
    assert parse_query(QueryDict(query.urlencode())) == query
    # The search form's repeated rows read the same; empty rows are skipped, "70" is 70 %.
    form = QueryDict(
        "term_op=and&term_category=3&term_min=0.5&term_op=not&term_category=9&term_min=70"
        "&term_op=and&term_category=&term_min=0.5&year_from=1990&year_to=1980"
    )
    parsed = parse_query(form)
    assert parsed.terms == (Term(3, "and", 0.5), Term(9, "not", 0.7))
    assert (parsed.filters.year_from, parsed.filters.year_to) == (1980, 1990)
    bad = parse_query(QueryDict("t=concept:x:and:0.5&t=concept:3:xor:0.5"))
    assert not bad.terms and len(bad.errors) == 2


# --------------------------------------------------------------------------- views


def select(client, category) -> None:
    session = client.session
    session[SESSION_KEY] = {"current": category.pk, category.kind: category.pk}
    session.save()


def grid_data(response) -> dict:
    html = response.content.decode()
    start = html.index('id="vgrid-data"')
    start = html.index(">", start) + 1
    return json.loads(html[start : html.index("</script>", start)])


def test_ranked_page_shows_scores_and_feedback_grid(arch, client_for):
    client = client_for("annotator")
    select(client, arch["A"])
    response = client.get(reverse("retrieval:ranked"), {"min_score": "0.65"})
    assert response.status_code == 200
    grid = grid_data(response)
    assert grid["source"] == "feedback" and grid["category_id"] == arch["A"].pk
    assert grid["save_url"] == reverse("annotation:save_labels")
    assert not grid["readonly"]
    assert [it["extra"] for it in grid["items"]] == [
        "score 0.95",
        "score 0.90",
        "score 0.80",
        "score 0.70",
    ]
    researcher = client_for("researcher")
    select(researcher, arch["A"])
    assert grid_data(researcher.get(reverse("retrieval:ranked")))["readonly"]


def test_ranked_page_without_published_run(db, client_for):
    category = Category.objects.create(name="Lonely")
    client = client_for("researcher")
    select(client, category)
    response = client.get(reverse("retrieval:ranked"))
    assert response.status_code == 200
    assert b'data-testid="no-run"' in response.content
    assert b"vgrid-data" not in response.content


def test_ranked_page_query_count_is_constant(arch, client_for, users):
    client = client_for("annotator")
    select(client, arch["A"])
    counts = []
    for rows, cols in ((1, 1), (2, 3)):
        Profile.objects.filter(user=users["annotator"]).update(grid_rows=rows, grid_cols=cols)
        for params in ({}, {"group": "shot", "hide_labelled": "1", "title": "e", "year_from": 1}):
            with CaptureQueriesContext(connection) as ctx:
                response = client.get(reverse("retrieval:ranked"), params)
            assert response.status_code == 200
            counts.append(len(ctx.captured_queries))
    assert len(set(counts)) == 1, counts
    assert counts[0] <= 12, counts


def test_feedback_labels_are_saved_with_source_feedback(arch, client_for):
    client = client_for("annotator")
    image = arch["i"][5]
    payload = {
        "category": arch["A"].pk,
        "source": "feedback",
        "labels": [{"key": str(image.pk), "value": -1}],
    }
    url = reverse("annotation:save_labels")
    response = client.post(url, json.dumps(payload), content_type="application/json")
    assert response.status_code == 200, response.content
    ann = Annotation.objects.get(image=image, category=arch["A"])
    assert (ann.value, ann.source) == (-1, "feedback")
    assert AnnotationEvent.objects.get(image_id=image.pk).source == "feedback"
    # Researchers see the grid read-only, and the endpoint refuses them too.
    response = client_for("researcher").post(
        url, json.dumps(payload), content_type="application/json"
    )
    assert response.status_code == 403


def test_search_form_redirects_to_shareable_url_and_ranks(arch, client_for):
    client = client_for("annotator")
    url = reverse("retrieval:search")
    response = client.get(
        url,
        {
            "term_op": ["and", "and", "and"],
            "term_category": [arch["A"].pk, arch["B"].pk, ""],
            "term_min": ["0.5", "0.5", "0.5"],
            "year_to": "1980",
        },
    )
    assert response.status_code == 302
    shared = response["Location"]
    assert shared.startswith(url + "?t=concept")
    response = client.get(shared)
    assert response.status_code == 200
    grid = grid_data(response)
    back = {str(im.pk): n for n, im in arch["i"].items()}
    assert [back[it["key"]] for it in grid["items"]] == [2, 1]
    assert grid["source"] == "feedback" and grid["category_id"] == arch["A"].pk
    assert b'data-testid="share-url"' in response.content
    # The label category can be switched to another positive term.
    response = client.get(shared + f"&label={arch['B'].pk}")
    assert grid_data(response)["category_id"] == arch["B"].pk


def test_search_page_errors(arch, client_for):
    client = client_for("researcher")
    url = reverse("retrieval:search")
    assert client.get(url).status_code == 200
    response = client.get(url, {"t": f"concept:{arch['C'].pk}:not:0.5"})
    assert "NOT alone" in response.content.decode()
    response = client.get(url, {"t": ["concept:999999:and:0.5", f"concept:{arch['C'].pk}:and:0.5"]})
    assert response.status_code == 200
    assert "no longer exist" in response.content.decode()
    assert len(grid_data(response)["items"]) == 2  # the remaining term still runs (i2, i5)


def test_search_query_count_is_constant(arch, client_for, users):
    client = client_for("annotator")
    counts = []
    for rows in (1, 3):
        Profile.objects.filter(user=users["annotator"]).update(grid_rows=rows, grid_cols=rows)
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(
                reverse("retrieval:search"),
                {"t": [f"concept:{arch['A'].pk}:and:0.1", f"concept:{arch['C'].pk}:not:0.8"]},
            )
        assert response.status_code == 200
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1], counts


def test_search_page_takes_the_term_kind_from_the_category(arch, client_for):
    person = Category.objects.create(name="Somebody", kind="person")
    run = make_run("person", 1)
    Prediction.objects.create(run=run, category=person, image=arch["i"][3], score=0.9)
    client = client_for("researcher")
    # The form sends no kind: the category's kind picks the person run.
    response = client.get(
        reverse("retrieval:search"),
        {"term_op": ["and"], "term_category": [person.pk], "term_min": ["0.5"]},
        follow=True,
    )
    keys = [it["key"] for it in grid_data(response)["items"]]
    assert keys == [str(arch["i"][3].pk)]
    assert f"t=person:{person.pk}:and:0.5" in response.redirect_chain[0][0]


def test_filtered_counts_stop_at_the_cap(arch, monkeypatch):
    import retrieval.ranking as ranking

    monkeypatch.setattr(ranking, "COUNT_CAP", 3)
    page = ranked_page(arch["run"], arch["A"], Filters(title="e"), per_page=2)
    assert (page.total, page.approximate) == (3, True)
    assert ids(arch, page) == [5, 1] and page.next_cursor
    nxt = ranked_page(
        arch["run"], arch["A"], Filters(title="e"), per_page=2, after=page.next_cursor
    )
    assert ids(arch, nxt) == [2, 3]
    # Unfiltered lists (an index range) are counted exactly.
    assert ranked_page(arch["run"], arch["A"], Filters(), per_page=2).total == 6
