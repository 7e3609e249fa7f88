"""Expected access of the labelling URLs (categories, grid, review, grid endpoints).

Format: see the docstring of ``tests/url_roles_viva.py``. Read by ``tests/test_roles.py``.
"""

from __future__ import annotations

from annotation.models import Category


def make_objects(users: dict) -> dict:
    category = Category.objects.create(name="Role walk concept", created_by=users["annotator"])
    return {"category": category}


def _category(o):
    return {"pk": o["category"].pk}


EXPECTED: dict[str, dict] = {
    "annotation:categories": {"role": "researcher"},
    "annotation:category_create": {"role": "annotator"},
    "annotation:category_edit": {"role": "annotator", "kwargs": _category},
    "annotation:category_delete": {
        "role": "trainer",
        "kwargs": _category,
        "why": "deleting drops training data for everyone (GET = confirmation page)",
    },
    "annotation:category_select": {
        "role": "researcher",
        "method": "POST",
        "ok": (302,),
        "data": lambda o: {"category": o["category"].pk},
        "why": "selecting only changes the user's own session",
    },
    "annotation:label": {
        "role": "annotator",
        "ok": (302,),
        "why": "a fresh session has no selected category: redirect to the categories page",
    },
    "annotation:review": {
        "role": "annotator",
        "ok": (302,),
        "why": "a fresh session has no selected category: redirect to the categories page",
    },
    "annotation:save_labels": {
        "role": "annotator",
        "method": "POST",
        "ok": (400,),
        "anonymous": "denied",
        "why": "a JSON endpoint: the walk posts a form, which is refused as not JSON",
    },
    "annotation:grid_prefs": {
        "role": "researcher",
        "method": "POST",
        "anonymous": "denied",
        "ok": (200,),
        "data": {"rows": 3, "cols": 4},
    },
}
