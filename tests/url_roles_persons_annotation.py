"""Expected access of the person labelling pages (issue 7, item 2): face clusters, the face
grid, review and the face-label endpoint. Format: see ``tests/url_roles_viva.py``.

Labelling is the annotator's work, so every page needs the annotator role; without a
person in the query string or the session the pages show a chooser (200).
"""

from __future__ import annotations

from annotation.models import Category


def make_objects(users: dict) -> dict:
    person = Category.objects.create(
        name="Role walk person", kind=Category.Kind.PERSON, created_by=users["annotator"]
    )
    return {"person": person}


EXPECTED: dict[str, dict] = {
    "annotation:person_clusters": {"role": "annotator", "why": "a fresh session: the chooser"},
    "annotation:person_faces": {"role": "annotator", "why": "a fresh session: the chooser"},
    "annotation:person_review": {"role": "annotator", "why": "a fresh session: the chooser"},
    "annotation:save_face_labels": {
        "role": "annotator",
        "method": "POST",
        "ok": (400,),
        "anonymous": "denied",
        "why": "a JSON endpoint: the walk posts a form, which is refused as not JSON",
    },
}
