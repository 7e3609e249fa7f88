"""URLs of data acquisition: web search (with its preview proxy), upload / URL, similar
images and sequence import. Included by ``annotation/urls.py`` (namespace ``annotation``)."""

from django.urls import path

from .views import crawl, query, sequence

urlpatterns = [
    path("collect/web/", crawl.CrawlView.as_view(), name="crawl"),
    path("collect/web/save/", crawl.CrawlSaveView.as_view(), name="crawl_save"),
    path("collect/web/preview/", crawl.PreviewView.as_view(), name="preview"),
    path("collect/upload/", query.UploadView.as_view(), name="upload"),
    path("collect/similar/", query.SimilarView.as_view(), name="similar"),
    path("collect/sequences/", sequence.SequenceImportView.as_view(), name="sequence_import"),
]
