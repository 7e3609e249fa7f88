"""Per-user settings and the role that decides what a user may do (DESIGN.md section 8)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Role(models.IntegerChoices):
    """Ordered: each role may do everything the roles below it may."""

    RESEARCHER = 10, "Researcher"
    ANNOTATOR = 20, "Annotator"
    TRAINER = 30, "Trainer"
    ADMIN = 40, "Admin"


class Profile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    role = models.PositiveSmallIntegerField(choices=Role.choices, default=Role.RESEARCHER)
    grid_rows = models.PositiveSmallIntegerField(default=4)
    grid_cols = models.PositiveSmallIntegerField(default=6)

    def __str__(self) -> str:
        return f"{self.user} ({self.get_role_display()})"
