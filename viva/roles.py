"""Roles and the one place where they are enforced (DESIGN.md section 8).

Every HTML view inherits :class:`RoleRequiredMixin`, every API view uses
:class:`HasRole`; both read the view's ``min_role`` (or ``roles_by_method``) and deny
when a view forgot to declare one, so a new page is never accidentally public.
"""

from __future__ import annotations

from django.contrib.auth.mixins import AccessMixin
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import HttpRequest
from rest_framework.permissions import BasePermission

from .models.users import Profile, Role

__all__ = ["HasRole", "Role", "RoleRequiredMixin", "has_role", "role_of"]


def role_of(user) -> int:
    """The user's role as an int; 0 for anonymous or inactive users."""
    if user is None or not user.is_authenticated or not user.is_active:
        return 0
    if user.is_superuser:
        return Role.ADMIN
    cached = getattr(user, "_viva_role", None)
    if cached is None:
        profile = Profile.objects.filter(user_id=user.pk).only("role").first()
        cached = profile.role if profile else Role.RESEARCHER
        user._viva_role = cached
    return cached


def has_role(user, role: int) -> bool:
    return role_of(user) >= role


def required_role(view, method: str) -> int:
    by_method = getattr(view, "roles_by_method", None) or {}
    role = by_method.get(method.upper(), getattr(view, "min_role", None))
    if role is None:
        raise ImproperlyConfigured(f"{type(view).__name__} must declare min_role.")
    return role


class RoleRequiredMixin(AccessMixin):
    """Login required, then at least ``min_role`` (per HTTP method via ``roles_by_method``)."""

    min_role: int | None = None
    roles_by_method: dict[str, int] | None = None

    def dispatch(self, request: HttpRequest, *args, **kwargs):
        needed = required_role(self, request.method or "GET")
        if not request.user.is_authenticated:
            return self.handle_no_permission()
        if role_of(request.user) < needed:
            raise PermissionDenied(
                f"This page needs the role {Role(needed).label.lower()} or higher."
            )
        return super().dispatch(request, *args, **kwargs)


class HasRole(BasePermission):
    """DRF counterpart of :class:`RoleRequiredMixin`; the default permission class."""

    message = "Your role does not allow this."

    def has_permission(self, request, view) -> bool:
        return role_of(request.user) >= required_role(view, request.method or "GET")
