"""Expected access of the person recognition URLs (issue 7); read by ``tests/test_roles.py``.

Format: see ``tests/url_roles_viva.py``. Why these roles: ``training.persons.views``.
"""

from __future__ import annotations


def make_objects(users: dict) -> dict:
    return {}


EXPECTED: dict[str, dict] = {
    "training:persons": {"role": "trainer", "why": "training replaces the active person model"},
    "training:person_feedback": {
        "role": "annotator",
        "method": "POST",
        # The walk posts a form, not the grid's JSON: allowed roles get the JSON 400.
        "ok": (400,),
        "anonymous": "denied",
        "why": "feedback on person results saves face labels",
    },
}
