"""Predictions of concept (and later person) models over the archive, and the inference
runs that produce them.

A run is split into chunks of consecutive image ids so several workers can share it and
a restarted worker continues where the last one stopped: a chunk's predictions are
written in the same transaction that marks it done, so nothing is scored twice or
skipped. Retrieval reads only the *published* run of a kind: a new model version's
predictions replace the old ones when its run has completed, not before.

Service: :mod:`retrieval.inference`; storage choice (a score floor) and its size:
``docs/prediction-storage.md``. Retrieval reads ``Prediction`` rows of the run with
``is_published=True`` (one per kind); superseded runs keep their row (history) but
lose their predictions.
"""

from __future__ import annotations

from django.db import models

from annotation.models import Category
from training.models import ModelVersion
from viva.models import Face, Image, Job


class InferenceRun(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        COMPLETE = "complete", "Complete"
        FAILED = "failed", "Failed"
        SUPERSEDED = "superseded", "Superseded"

    kind = models.CharField(
        max_length=10, default="concept", help_text="The model version's kind (concept, …)."
    )
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="inference_runs"
    )
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    collection_ids = models.JSONField(default=list, blank=True, help_text="Empty: all.")
    score_floor = models.FloatField(
        help_text="Scores below this are not stored (see docs/prediction-storage.md)."
    )
    n_images = models.PositiveIntegerField(default=0)
    n_chunks = models.PositiveIntegerField(default=0)
    n_scored = models.PositiveIntegerField(default=0, help_text="Filled when complete.")
    n_skipped = models.PositiveIntegerField(default=0, help_text="Unreadable keyframes.")
    n_predictions = models.PositiveBigIntegerField(default=0, help_text="Rows stored.")
    is_published = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind"],
                condition=models.Q(is_published=True),
                name="inferencerun_one_published",
            )
        ]

    def __str__(self) -> str:
        return f"inference of {self.model_version} ({self.get_status_display()})"


class InferenceChunk(models.Model):
    """A range of image ids ``[first_image_id, last_image_id]`` of one run.

    Claimed atomically (``UPDATE … WHERE status='pending'``, or ``'claimed'`` with a
    heartbeat older than ``VIVA_JOB_HEARTBEAT_TIMEOUT``); its predictions are written in
    the transaction that marks it done, and only by the holder of ``claimed_by``."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        CLAIMED = "claimed", "Claimed"
        DONE = "done", "Done"

    run = models.ForeignKey(InferenceRun, on_delete=models.CASCADE, related_name="chunks")
    number = models.PositiveIntegerField()
    first_image_id = models.BigIntegerField()
    last_image_id = models.BigIntegerField()
    n_images = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    claimed_by = models.CharField(max_length=200, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)
    n_scored = models.PositiveIntegerField(default=0)
    n_skipped = models.PositiveIntegerField(default=0)
    n_predictions = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["run", "number"]
        constraints = [
            models.UniqueConstraint(fields=["run", "number"], name="inferencechunk_unique")
        ]
        indexes = [models.Index(fields=["run", "status"], name="inferencechunk_status")]

    def __str__(self) -> str:
        return f"chunk {self.number} of run {self.run_id}"


class Prediction(models.Model):
    """One stored score; only scores at or above the run's floor are kept."""

    # No single-column index on run: it is the prefix of ``prediction_rank``.
    run = models.ForeignKey(
        InferenceRun, on_delete=models.CASCADE, related_name="predictions", db_index=False
    )
    category = models.ForeignKey(Category, on_delete=models.CASCADE, related_name="+")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="+", db_index=False)
    score = models.FloatField()
    # Person runs: the face of the image that scored best (one row per image and person).
    face = models.ForeignKey(
        Face, null=True, blank=True, on_delete=models.CASCADE, related_name="+", db_index=False
    )

    class Meta:
        indexes = [
            # Ranked retrieval: top-k of one category in one run, read in index order;
            # the image id in the index lets combined queries run from the index alone.
            models.Index(fields=["run", "category", "-score", "image"], name="prediction_rank"),
            models.Index(fields=["image", "run"], name="prediction_image"),
        ]

    def __str__(self) -> str:
        return f"{self.category_id} · image {self.image_id}: {self.score:.3f}"


class HashCode(models.Model):
    """The 256-bit hash code of one image under one hashing model (issue 6).

    Codes are stored *permuted* (see ``retrieval.hashing.bits``): bytes 0–7 are the 64
    coarse bits, split into four 16-bit subcodes (bytes 2i, 2i+1), so every index backend
    reads the coarse code without knowing the model. Stored so indexes can be rebuilt.
    """

    version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="hash_codes")
    code = models.BinaryField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "image"], name="hash_code_unique")
        ]

    def __str__(self) -> str:
        return f"code of image {self.image_id} (model {self.version_id})"
