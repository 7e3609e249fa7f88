"""Expected access of the face-indexing page (issue 7); read by ``tests/test_roles.py``.

Format: see ``tests/url_roles_viva.py``. Trainer and up: indexing occupies a GPU for a
long time, like inference (``training.faces.views``).
"""

from __future__ import annotations

from viva.models import Job


def make_objects(users: dict) -> dict:
    job = Job.objects.create(
        kind="index_faces",
        title="Face indexing of the archive",
        queue="gpu",
        status=Job.Status.SUCCEEDED,
        created_by=users["trainer"],
        progress=4,
        total=4,
        metrics={"faces/s": [[1.0, 3.5]], "images/s": [[1.0, 2.0]]},
        result={"summary": "Scanned 4 images."},
    )
    return {"job": job}


EXPECTED: dict[str, dict] = {
    "training:faces": {"role": "trainer", "why": "starts GPU jobs over the whole archive"},
}
