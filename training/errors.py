"""Errors of the training app whose messages are shown to the user as they are."""

from __future__ import annotations

from viva.jobs import JobError


class TrainingError(JobError):
    """A training run failed for a reason the user can act on (the job's error text)."""


class TrainingRefused(Exception):
    """A run was not started (no concept above the threshold, device busy or gone, bad
    options); no job was created. The message is meant for the user."""
