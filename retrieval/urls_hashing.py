"""URLs of the "Hash codes" page (issue 6); included by the app's urls module.

Roles: ``retrieval.hashing.views`` docstring; expected access: ``tests/url_roles_hashing.py``.
"""

from django.urls import path

from .hashing.views import HashingView

urlpatterns = [
    path("hashing/", HashingView.as_view(), name="hashing"),
]
