"""URLs of the person similarity search (issue 7, item 5); included by ``retrieval.urls``.

Roles: ``retrieval.face_search.views`` docstring; expected access:
``tests/url_roles_face_search.py``.
"""

from django.urls import path

from .face_search import views

urlpatterns: list = [
    path("faces/", views.FaceSearchView.as_view(), name="faces"),
    path("faces/index/", views.FaceIndexView.as_view(), name="faces_index"),
    path(
        "faces/query/<str:token>/image/",
        views.FaceQueryImageView.as_view(),
        name="face_query_image",
    ),
]
