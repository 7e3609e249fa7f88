"""URLs of retrieval (issue 5): ranked results, combined search, export, download.

Roles: ``retrieval.views`` docstring; expected access: ``tests/url_roles_retrieval.py``.
"""

from django.urls import path

from . import urls_faces, urls_hashing, urls_similarity, views

app_name = "retrieval"
urlpatterns = [
    path("ranked/", views.RankedView.as_view(), name="ranked"),
    path("search/", views.SearchView.as_view(), name="search"),
    path("export/", views.ExportView.as_view(), name="export"),
    path("export/<int:pk>/download/", views.DownloadView.as_view(), name="download"),
]
urlpatterns += urls_similarity.urlpatterns + urls_hashing.urlpatterns + urls_faces.urlpatterns
