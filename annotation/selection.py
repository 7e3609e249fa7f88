"""The selected category, kept in the session like in the original VIVA.

Archivists work on one concept or person for a long stretch (collect, label, review),
so the choice is made once and every page that works on a category reads it from the
session. One selection is kept per kind (a person page can keep its person while the
concept pages keep their concept) plus which one was chosen last.

Pages that need a selection use :class:`CategoryRequiredMixin`: without one they send
the user to the categories page with a message instead of failing or guessing.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse

from .models import Category

SESSION_KEY = "annotation_selected"
_CACHE_ATTR = "_annotation_selected_cache"

__all__ = [
    "SESSION_KEY",
    "CategoryRequiredMixin",
    "clear_selected",
    "get_selected",
    "set_selected",
]


def _state(request: HttpRequest) -> dict:
    state = request.session.get(SESSION_KEY)
    return state if isinstance(state, dict) else {}


def get_selected(request: HttpRequest, kind: str | None = None) -> Category | None:
    """The selected category (of ``kind`` if given), or ``None``.

    ``kind=None`` returns the category chosen last, whatever its kind. The row is
    loaded once per request (one query) and cached on the request, because the
    selection bar, the mixin and the view all ask for it.
    """
    state = _state(request)
    key = kind or "current"
    pk = state.get(key)
    if not pk:
        return None
    cache: dict = getattr(request, _CACHE_ATTR, None) or {}
    if pk not in cache:
        cache[pk] = Category.objects.filter(pk=pk).first()
        setattr(request, _CACHE_ATTR, cache)
    category = cache[pk]
    if category is None:
        # Deleted meanwhile (by another user): forget it so the next page asks again.
        clear_selected(request, pk)
        return None
    if kind and category.kind != kind:
        return None
    return category


def set_selected(request: HttpRequest, category: Category) -> None:
    """Remember ``category`` as the current one and as the selection of its kind."""
    state = dict(_state(request))
    state["current"] = category.pk
    state[category.kind] = category.pk
    request.session[SESSION_KEY] = state
    cache: dict = getattr(request, _CACHE_ATTR, None) or {}
    cache[category.pk] = category
    setattr(request, _CACHE_ATTR, cache)


def clear_selected(request: HttpRequest, pk: int | None = None) -> None:
    """Forget the selection (only where it points at ``pk`` when given)."""
    state = {k: v for k, v in _state(request).items() if pk is not None and v != pk}
    request.session[SESSION_KEY] = state


class CategoryRequiredMixin:
    """Load the selected category into ``self.category`` or redirect to the categories page.

    Put it *after* ``RoleRequiredMixin`` in the bases so roles are checked first
    (an anonymous user goes to the login page, not to the categories page).
    ``category_kind`` restricts the selection to concepts or persons.
    """

    category_kind: str | None = None
    category: Category

    def dispatch(self, request: HttpRequest, *args, **kwargs):
        category = get_selected(request, self.category_kind)
        if category is None:
            what = {"concept": "a concept", "person": "a person"}.get(
                self.category_kind or "", "a concept or person"
            )
            messages.info(request, f"Please select {what} first; this page works on it.")
            params = {"next": request.get_full_path()}
            if self.category_kind:
                params["kind"] = self.category_kind
            return HttpResponseRedirect(reverse("annotation:categories") + "?" + urlencode(params))
        self.category = category
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx["selected_category"] = self.category
        return ctx
