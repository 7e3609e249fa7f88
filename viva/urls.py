"""Root URL configuration: core pages, each app's pages, the API, media in debug."""

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.views import View
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import routers

from annotation import api as annotation_api
from retrieval import api as retrieval_api
from retrieval.search import api as similarity_api
from training import api as training_api

from . import api
from .roles import Role, RoleRequiredMixin
from .views import archive, jobs, users


class APIRootView(routers.APIRootView):
    min_role = Role.RESEARCHER


class Router(routers.DefaultRouter):
    APIRootView = APIRootView


router = Router()
router.register("collections", api.CollectionViewSet)
router.register("videos", api.VideoViewSet)
router.register("jobs", api.JobViewSet)
router.register("categories", annotation_api.CategoryViewSet, basename="category")
router.register("images", annotation_api.ImageViewSet, basename="image")
router.register("annotations", annotation_api.AnnotationViewSet, basename="annotation")

# Non-resource endpoints; listed before the router so ``jobs/<pk>/`` does not catch them.
api_patterns = [
    path("jobs/training/", training_api.TrainingStartView.as_view(), name="api-job-training"),
    path("jobs/inference/", training_api.InferenceStartView.as_view(), name="api-job-inference"),
    path("jobs/export/", retrieval_api.ExportStartView.as_view(), name="api-job-export"),
    path("retrieval/", retrieval_api.RetrievalView.as_view(), name="api-retrieval"),
    path("search/", retrieval_api.SearchView.as_view(), name="api-search"),
    path("classify/", training_api.ClassifyView.as_view(), name="api-classify"),
    path("similar/", similarity_api.SimilarView.as_view(), name="api-similar"),
]


class SchemaView(RoleRequiredMixin, SpectacularAPIView):
    min_role = Role.RESEARCHER


class DocsView(RoleRequiredMixin, SpectacularSwaggerView):
    min_role = Role.RESEARCHER


class MediaView(RoleRequiredMixin, View):
    """Media in the embedded setup, behind login like every other page."""

    min_role = Role.RESEARCHER

    def get(self, request, path: str):
        return serve(request, path, document_root=settings.MEDIA_ROOT)


archive_patterns = (
    [
        path("", archive.CollectionListView.as_view(), name="collections"),
        path("collections/<int:pk>/", archive.CollectionDetailView.as_view(), name="collection"),
        path("videos/<int:pk>/", archive.VideoDetailView.as_view(), name="video"),
        path("import/", archive.UploadView.as_view(), name="upload"),
    ],
    "archive",
)
job_patterns = (
    [
        path("", jobs.JobListView.as_view(), name="list"),
        path("status/", jobs.JobStatusListView.as_view(), name="status_list"),
        path("worker-check/", jobs.WorkerCheckView.as_view(), name="worker_check"),
        path("<int:pk>/", jobs.JobDetailView.as_view(), name="detail"),
        path("<int:pk>/status/", jobs.JobStatusView.as_view(), name="status"),
        path("<int:pk>/cancel/", jobs.JobActionView.as_view(action="cancel"), name="cancel"),
        path("<int:pk>/resume/", jobs.JobActionView.as_view(action="resume"), name="resume"),
    ],
    "jobs",
)
user_patterns = (
    [
        path("", users.UserListView.as_view(), name="list"),
        path("new/", users.UserCreateView.as_view(), name="create"),
        path("<int:pk>/", users.UserEditView.as_view(), name="edit"),
    ],
    "users",
)

urlpatterns = [
    path("", archive.HomeView.as_view(), name="home"),
    path("archive/", include(archive_patterns)),
    path("jobs/", include(job_patterns)),
    path("annotate/", include("annotation.urls")),
    path("train/", include("training.urls")),
    path("retrieve/", include("retrieval.urls")),
    path("users/", include(user_patterns)),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("django-admin/", admin.site.urls),
    path("api/v1/", include(api_patterns)),
    path("api/v1/", include(router.urls)),
    path("api/v1/schema/", SchemaView.as_view(), name="api-schema"),
    path("api/v1/docs/", DocsView.as_view(url_name="api-schema"), name="api-docs"),
]

if settings.VIVA_SERVE_MEDIA:
    # Embedded default; production serves media with nginx (docker/nginx.conf).
    urlpatterns.append(re_path(r"^media/(?P<path>.+)$", MediaView.as_view(), name="media"))
