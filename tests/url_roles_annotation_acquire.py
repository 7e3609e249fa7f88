"""Expected access of the acquisition URLs (web search, preview proxy, upload / URL, similar
images, sequence import).

Format: see the docstring of ``tests/url_roles_viva.py``. Read by ``tests/test_roles.py``.
Collecting data is annotator work; researchers get 403 everywhere here.
"""

from __future__ import annotations

NO_SELECTION = "a fresh session has no selected category: redirect to the categories page"


def make_objects(users: dict) -> dict:
    return {}


EXPECTED: dict[str, dict] = {
    "annotation:crawl": {"role": "annotator", "ok": (302,), "why": NO_SELECTION},
    "annotation:crawl_save": {
        "role": "annotator",
        "method": "POST",
        "ok": (400,),
        "anonymous": "denied",
        "why": "a JSON endpoint: the walk posts a form, which is refused as not JSON",
    },
    "annotation:preview": {
        "role": "annotator",
        "ok": (400,),
        "why": "without a signed preview token the proxy answers 400 (and fetches nothing)",
    },
    "annotation:upload": {"role": "annotator", "ok": (302,), "why": NO_SELECTION},
    "annotation:similar": {"role": "annotator", "ok": (302,), "why": NO_SELECTION},
    "annotation:sequence_import": {"role": "annotator", "ok": (302,), "why": NO_SELECTION},
}
