"""Expected access of the "Hash codes" page (issue 6); read by ``tests/test_roles.py``.

Format: see ``tests/url_roles_viva.py``. Why these roles: ``retrieval.hashing.views``.
"""

from __future__ import annotations

from training.models import ModelVersion


def make_objects(users: dict) -> dict:
    version = ModelVersion.objects.create(
        kind="hashing",
        version=901,
        directory="hashing/901",
        weights_path="hashing/901/weights.pt",
        config={"method": "itq", "bits": 256, "network": {"name": "tiny-cnn"}},
        weights_source={"source": "random", "description": "random initialisation"},
    )
    return {"version": version}


EXPECTED: dict[str, dict] = {
    "retrieval:hashing": {
        "role": "trainer",
        "why": "starting fits and training runs uses compute; activation changes every search",
    },
}
