"""URLs of the annotation app: labelling (grid, review, categories) and acquisition."""

from .urls_acquire import urlpatterns as acquire_patterns
from .urls_faces import urlpatterns as face_patterns
from .urls_label import urlpatterns as label_patterns

app_name = "annotation"
urlpatterns = label_patterns + acquire_patterns + face_patterns
