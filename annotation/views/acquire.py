"""Helpers shared by the acquisition pages (web search, upload / URL, similar images, CSV).

The pages themselves live in :mod:`.crawl`, :mod:`.query` and :mod:`.sequence`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from ..grid import GridItem, GridPage, parse_page_args


def slice_page(
    request: HttpRequest, items: Sequence[Any], per_page: int
) -> tuple[list[Any], int, int]:
    """The part of an in-memory result list shown on the requested page.

    Returns ``(rows, page_number, first_index)``; the number is clamped to the pages
    that exist, so an old link after fewer results still shows something.
    """
    number, _after = parse_page_args(request)
    pages = max(1, math.ceil(len(items) / per_page))
    number = min(max(1, number), pages)
    start = (number - 1) * per_page
    return list(items[start : start + per_page]), number, start


def list_grid_page(items: list[GridItem], *, number: int, per_page: int, total: int) -> GridPage:
    """A :class:`GridPage` over an in-memory list (search results, similarity results).

    ``next_cursor`` is the empty string when a next page exists: ``page_links`` then
    builds a plain ``?page=n+1`` link (these lists have no keyset cursor).
    """
    more = number * per_page < total
    return GridPage(items, number, per_page, total, False, "" if more else None)


def label_grid_url() -> str | None:
    """Where candidates are labelled (the label page), if it is installed."""
    try:
        return reverse("annotation:label")
    except NoReverseMatch:
        return None
