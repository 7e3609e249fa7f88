"""Expected access of image similarity search (issue 6); read by ``tests/test_roles.py``.

Format: see ``tests/url_roles_viva.py``. Why these roles: ``retrieval.search.views`` and
``retrieval.search.api`` docstrings.
"""

from __future__ import annotations


def make_objects(users: dict) -> dict:
    return {}


EXPECTED: dict[str, dict] = {
    "retrieval:similar": {"role": "researcher", "why": "searching is a researcher's task"},
    "retrieval:similar_index": {
        "role": "trainer",
        "method": "POST",
        "ok": (302,),
        "why": "building the index runs a model over the whole archive",
    },
    "api-similar": {
        "role": "researcher",
        "method": "POST",
        "ok": (400,),
        "why": "the walk sends no query: a 400 naming what to send, after the role check",
    },
}
