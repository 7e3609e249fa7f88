"""URLs of person labelling by faces (issue 7): clusters, the face grid, review, saving."""

from django.urls import path

from .views import persons

urlpatterns = [
    path("persons/clusters/", persons.PersonClustersView.as_view(), name="person_clusters"),
    path("persons/faces/", persons.PersonFacesView.as_view(), name="person_faces"),
    path("persons/faces/save/", persons.SaveFaceLabelsView.as_view(), name="save_face_labels"),
    path("persons/review/", persons.PersonReviewView.as_view(), name="person_review"),
]
