"""URLs of image similarity search (issue 6); included by the app's urls module.

Roles: ``retrieval.search.views`` docstring; expected access: ``tests/url_roles_similarity.py``.
"""

from django.urls import path

from .search import views

urlpatterns = [
    path("similar/", views.SimilarSearchView.as_view(), name="similar"),
    path("similar/index/", views.SimilarIndexView.as_view(), name="similar_index"),
]
