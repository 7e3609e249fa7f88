"""Expected access of the inference page (issue 5, item 1); read by ``tests/test_roles.py``.

Format: see ``tests/url_roles_viva.py``. Trainer and up, like training: a run takes a
device for a long time and replaces what every researcher's retrieval shows.
"""

from __future__ import annotations


def make_objects(users: dict) -> dict:
    return {}


EXPECTED: dict[str, dict] = {
    "training:inference": {"role": "trainer", "why": "uses a device; replaces predictions"},
}
