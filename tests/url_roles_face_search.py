"""Expected access of the person similarity search pages (issue 7, item 5); read by
``tests/test_roles.py``.

Format: see ``tests/url_roles_viva.py``. Why these roles: ``retrieval.face_search.views``
docstring (searching is a researcher's task; rebuilding the index is a trainer's).
"""

from __future__ import annotations


def make_objects(users: dict) -> dict:
    return {}


EXPECTED: dict[str, dict] = {
    "retrieval:faces": {"role": "researcher", "why": "search, like every search page"},
    "retrieval:faces_index": {
        "role": "trainer",
        "method": "POST",
        "ok": (302,),
        "why": "a long job that replaces the index everyone searches",
    },
    "retrieval:face_query_image": {
        "role": "researcher",
        "kwargs": {"token": "0" * 32},
        # Query pictures belong to the user who searched: an unknown token is a 404 for
        # every role that may search; lower access (anonymous) is still sent to login.
        "ok": (404,),
        "why": "the kept copy of the user's own query picture",
    },
}
