"""URLs of the training pages (issue 4); roles are documented in ``training.views``.

No page sits at the bare prefix: the menu marks an entry active when the path starts
with its URL, so "Train concepts" at ``/train/`` would light up on the evaluation page too.
"""

from django.urls import path

from .urls_faces import urlpatterns as face_patterns
from .urls_persons import urlpatterns as person_patterns
from .views.evaluation import EvaluationView
from .views.inference import InferenceView
from .views.models import ActivateVersionView, ModelListView
from .views.overview import DatasetOverviewView
from .views.train import TrainView

app_name = "training"
urlpatterns = [
    path("concepts/", TrainView.as_view(), name="train"),
    path("dataset/", DatasetOverviewView.as_view(), name="overview"),
    path("models/", ModelListView.as_view(), name="models"),
    path("models/<int:pk>/activate/", ActivateVersionView.as_view(), name="activate"),
    path("evaluation/", EvaluationView.as_view(), name="evaluation"),
    path("inference/", InferenceView.as_view(), name="inference"),
]
urlpatterns += face_patterns + person_patterns
