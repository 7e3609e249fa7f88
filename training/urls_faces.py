"""URLs of the face pipeline (issue 7); mounted under ``/train/`` by ``training.urls``."""

from django.urls import path

from .faces.views import FacesView

urlpatterns: list = [
    path("faces/", FacesView.as_view(), name="faces"),
]
