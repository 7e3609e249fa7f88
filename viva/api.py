"""REST API of the core (under /api/v1/): collections, videos, jobs."""

from __future__ import annotations

from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from .jobs import cancel_job, resume_job
from .models import Collection, Job, Video
from .pagination import ApiPagination
from .roles import Role
from .views.jobs import job_state, may_control


class DetailSerializer(serializers.Serializer):
    """``{"detail": message}``: a refusal or error meant for the user."""

    detail = serializers.CharField()


class CollectionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Collection
        fields = ["id", "name", "kind", "description", "created_at"]


class VideoSerializer(serializers.ModelSerializer):
    class Meta:
        model = Video
        fields = [
            "id",
            "collection",
            "title",
            "date",
            "year",
            "fps",
            "n_frames",
            "duration_ms",
            "width",
            "height",
            "metadata",
            "created_at",
        ]


class JobSerializer(serializers.ModelSerializer):
    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "title",
            "status",
            "progress",
            "total",
            "progress_note",
            "metrics",
            "result",
            "error",
            "device",
            "created_at",
            "started_at",
            "finished_at",
        ]


class CollectionViewSet(viewsets.ReadOnlyModelViewSet):
    min_role = Role.RESEARCHER
    pagination_class = ApiPagination
    queryset = Collection.objects.all()
    serializer_class = CollectionSerializer


class VideoViewSet(viewsets.ReadOnlyModelViewSet):
    min_role = Role.RESEARCHER
    pagination_class = ApiPagination
    queryset = Video.objects.all()
    serializer_class = VideoSerializer


class JobViewSet(viewsets.ReadOnlyModelViewSet):
    min_role = Role.RESEARCHER
    pagination_class = ApiPagination
    roles_by_method = {"POST": Role.ANNOTATOR}
    queryset = Job.objects.select_related("created_by")
    serializer_class = JobSerializer

    def _control(self, request, fn):
        job = self.get_object()
        if not may_control(request.user, job):
            return Response({"detail": "You may only control your own jobs."}, status=403)
        return Response(job_state(fn(job)))

    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None, format=None):
        return self._control(request, cancel_job)

    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None, format=None):
        return self._control(request, resume_job)
