"""Template helpers of the labelling pages: the selected-category bar."""

from __future__ import annotations

from django import template
from django.db.models.functions import Lower

from ..models import Category
from ..selection import get_selected

register = template.Library()


@register.simple_tag(takes_context=True)
def selection_state(context) -> dict:
    """The selected category and the choices of the quick switcher (one query).

    Reads ``selected_category`` from the context (set by ``CategoryRequiredMixin``) or
    else the session, so any page can include ``annotation/_selection.html``.
    """
    request = context.get("request")
    category = context.get("selected_category")
    if category is None and request is not None:
        category = get_selected(request)
    choices = list(
        Category.objects.order_by("kind", Lower("name")).values_list("pk", "kind", "name")
    )
    groups: dict[str, list[tuple[int, str]]] = {}
    for pk, kind, name in choices:
        groups.setdefault(Category.Kind(kind).label + "s", []).append((pk, name))
    return {
        "category": category,
        "groups": groups,
        "next": request.get_full_path() if request is not None else "",
    }
