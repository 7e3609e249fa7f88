"""Django admin registrations (for superusers; everyday user management is /users/)."""

from django.contrib import admin

from .models import Collection, Face, Image, Job, Profile, Shot, Video


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "created_at"]


@admin.register(Video)
class VideoAdmin(admin.ModelAdmin):
    list_display = ["title", "collection", "year", "duration_ms", "n_frames", "fps"]
    list_filter = ["collection"]
    search_fields = ["title", "original_name"]


@admin.register(Shot)
class ShotAdmin(admin.ModelAdmin):
    list_display = ["video", "number", "start_ms", "end_ms"]
    raw_id_fields = ["video"]


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["id", "collection", "video", "frame", "original_name"]
    raw_id_fields = ["video", "shot"]
    list_filter = ["collection"]


@admin.register(Face)
class FaceAdmin(admin.ModelAdmin):
    list_display = ["id", "image", "score"]
    raw_id_fields = ["image"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "title", "status", "progress", "total", "created_at"]
    list_filter = ["status", "kind"]


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "role"]
    list_filter = ["role"]
