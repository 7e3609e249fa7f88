"""Query by example (issue 6): the object named by ``VIVA_SIMILARITY_BACKEND``.

Placeholder until the index exists: every query says the index is not built.
"""

from __future__ import annotations

from annotation.similarity import NOT_BUILT_MESSAGE, IndexNotBuilt


def index_status() -> tuple[bool, str]:
    return False, NOT_BUILT_MESSAGE


def similar_images(query_images, k: int) -> list[tuple[int, float]]:
    raise IndexNotBuilt()
