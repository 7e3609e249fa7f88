"""Expected access of the retrieval pages (issue 5); read by ``tests/test_roles.py``.

Format: see ``tests/url_roles_viva.py``. Why these roles: ``retrieval.views`` docstring.
"""

from __future__ import annotations

from annotation.models import Category
from viva.models import Job


def make_objects(users: dict) -> dict:
    concept = Category.objects.create(name="Role walk retrieval concept")
    export = Job.objects.create(
        kind="export_segments",
        title="Export",
        queue="io",
        status=Job.Status.SUCCEEDED,
        created_by=users["researcher"],
        result={"file": "missing.zip"},
    )
    return {"concept": concept, "export": export}


EXPECTED: dict[str, dict] = {
    "retrieval:ranked": {
        "role": "researcher",
        "ok": (200, 302),
        "why": "redirects to the categories page until a category is selected",
    },
    "retrieval:search": {"role": "researcher"},
    "retrieval:export": {"role": "researcher"},
    "retrieval:download": {
        "role": "researcher",
        "kwargs": lambda o: {"pk": o["export"].pk},
        # The file is missing (404) for those who may read the export (its creator and
        # trainers); other annotators get 403. tests/test_export.py checks each case.
        "ok": (403, 404),
        "why": "per export: its creator and trainers",
    },
}
