"""The model registry: one row per trained model version, per-category evaluation rows.

Files live under ``VIVA_MODELS_DIR/<kind>/<version>/`` (``weights.pt``, ``classes.json``,
``config.json``, ``split.json``, ``metrics.json``, ``val_scores.npz``); the row points at
them and repeats what pages need without reading files (class map, metrics).
"""

from __future__ import annotations

from django.db import models


class ModelVersion(models.Model):
    class Kind(models.TextChoices):
        CONCEPT = "concept", "Concepts"
        PERSON = "person", "Persons"
        HASHING = "hashing", "Hashing"

    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.CONCEPT)
    version = models.PositiveIntegerField(help_text="1, 2, 3 … per kind.")
    directory = models.CharField(
        max_length=500, help_text="Folder of the version's files, relative to VIVA_MODELS_DIR."
    )
    weights_path = models.CharField(max_length=500, help_text="Relative to VIVA_MODELS_DIR.")
    config = models.JSONField(default=dict, help_text="Network and preprocessing.")
    train_config = models.JSONField(default=dict, blank=True, help_text="Options of the run.")
    class_map = models.JSONField(
        default=list, help_text="[{index, id, name}]: output index → category."
    )
    split_path = models.CharField(max_length=500, blank=True)
    split_summary = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    mean_ap = models.FloatField(null=True, blank=True)
    weights_source = models.JSONField(
        default=dict, blank=True, help_text="Which weights the run started from."
    )
    previous = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The version that was active when this one was trained.",
    )
    is_active = models.BooleanField(default=False)
    job = models.ForeignKey(
        "viva.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["kind", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "version"], name="modelversion_unique"),
            models.UniqueConstraint(
                fields=["kind"],
                condition=models.Q(is_active=True),
                name="modelversion_one_active",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} v{self.version}"

    @property
    def num_classes(self) -> int:
        return len(self.class_map)


class Evaluation(models.Model):
    """Validation result of one category for one model version (AP as in eq. 6.5,
    scikit-learn's ``average_precision_score``)."""

    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="evaluations"
    )
    category = models.ForeignKey(
        "annotation.Category",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    category_name = models.CharField(max_length=200)
    ap = models.FloatField(null=True, blank=True, help_text="None without validation positives.")
    n_val_pos = models.PositiveIntegerField(default=0)
    n_val_neg = models.PositiveIntegerField(default=0, help_text="Labelled negatives.")
    n_val_weak = models.PositiveIntegerField(default=0, help_text="Weak negatives.")
    pr_curve = models.JSONField(
        default=dict, blank=True, help_text="{precision: [...], recall: [...]}, downsampled."
    )

    class Meta:
        ordering = ["model_version", "category_name"]
        constraints = [
            models.UniqueConstraint(
                fields=["model_version", "category_name"], name="evaluation_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_version} · {self.category_name}"
