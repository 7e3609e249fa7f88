"""URLs of person recognition (issue 7): the persons page and the feedback endpoint that
retrieval pages of persons post face labels to. Included by ``training.urls``."""

from django.urls import path

from .persons.views import PersonFeedbackView, PersonsView

urlpatterns: list = [
    path("persons/", PersonsView.as_view(), name="persons"),
    path("persons/feedback/", PersonFeedbackView.as_view(), name="person_feedback"),
]
