"""Categories, annotations with their event log, image sources and labelling candidates."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower

from viva.models import Face, Image


class Category(models.Model):
    """A concept or a person: one model so grid, review and training serve both kinds."""

    class Kind(models.TextChoices):
        CONCEPT = "concept", "Concept"
        PERSON = "person", "Person"

    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.CONCEPT)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["kind", Lower("name")]
        constraints = [
            models.UniqueConstraint(Lower("name"), "kind", name="category_unique_name"),
        ]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def clash(cls, kind: str, name: str, exclude_pk: int | None = None) -> Category | None:
        """The category that already has this name (ignoring case) and kind, if any.

        Both sides are lowered by the database, exactly as the unique index does it
        (SQLite's LOWER() only folds ASCII, so a Python-side ``.lower()`` would miss).
        """
        qs = cls.objects.annotate(lname=Lower("name")).filter(
            kind=kind, lname=Lower(models.Value(name))
        )
        if exclude_pk is not None:
            qs = qs.exclude(pk=exclude_pk)
        return qs.first()


class Label(models.IntegerChoices):
    POSITIVE = 1, "positive"
    NEGATIVE = -1, "negative"
    NEUTRAL = 0, "neutral"


class Source(models.TextChoices):
    GRID = "grid", "Label grid"
    CRAWLER = "crawler", "Web search"
    SIMILARITY = "similarity", "Similarity search"
    UPLOAD = "upload", "Upload / URL"
    IMPORT = "import", "Sequence import"
    REVIEW = "review", "Review"
    FEEDBACK = "feedback", "Retrieval feedback"
    CLUSTER = "cluster", "Face cluster"
    API = "api", "API"
    DELETE = "delete", "Category deleted"


class Annotation(models.Model):
    """The current label of one image (or face) for one category."""

    # Indexes are deliberately few: every save writes to all of them on a table of
    # millions of rows. (image, category) is covered by ``annotation_image``.
    image = models.ForeignKey(
        Image, on_delete=models.CASCADE, related_name="annotations", db_index=False
    )
    face = models.ForeignKey(
        Face, null=True, blank=True, on_delete=models.CASCADE, related_name="annotations"
    )
    category = models.ForeignKey(Category, on_delete=models.CASCADE, related_name="annotations")
    value = models.SmallIntegerField(choices=Label.choices)
    source = models.CharField(max_length=20, choices=Source.choices, default=Source.GRID)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        db_index=False,
    )
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["category", "image"],
                condition=models.Q(face__isnull=True),
                name="annotation_unique_image",
            ),
            models.UniqueConstraint(
                fields=["category", "face"],
                condition=models.Q(face__isnull=False),
                name="annotation_unique_face",
            ),
        ]
        indexes = [
            # Review pages, label counts, "positives of a category": image-level labels
            # per (category, value), newest first, in the grid's page order (time DESC,
            # id ASC), so pages, deep OFFSETs and counts are index-only scans even with
            # millions of labels (annotation/grid.py). Queries must say face IS NULL.
            models.Index(
                fields=["category", "value", "-updated_at", "id"],
                name="annotation_review",
                condition=models.Q(face__isnull=True),
            ),
            models.Index(fields=["image", "category"], name="annotation_image"),
        ]

    def __str__(self) -> str:
        return f"{self.get_value_display()} {self.category_id} · image {self.image_id}"


class AnnotationEvent(models.Model):
    """Append-only history: every change of every label, who made it, and from where.

    Ids are kept as plain integers (not cascading keys) so the history survives deleted
    categories and images: labels are never lost silently.
    """

    image_id = models.BigIntegerField(db_index=True)
    face_id = models.BigIntegerField(null=True, blank=True)
    category_id = models.BigIntegerField(db_index=True)
    category_name = models.CharField(max_length=200)
    old_value = models.SmallIntegerField(null=True, blank=True, choices=Label.choices)
    new_value = models.SmallIntegerField(null=True, blank=True, choices=Label.choices)
    source = models.CharField(max_length=20, choices=Source.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        db_index=False,
    )
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.category_name} · image {self.image_id}: {self.old_value} → {self.new_value}"


class ImageOrigin(models.Model):
    """Where an acquired image came from; one image may have several origins (sha256 dedup)."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="origins")
    source = models.CharField(max_length=20, choices=Source.choices)
    url = models.URLField(max_length=2000, blank=True)
    search_term = models.CharField(max_length=300, blank=True)
    engine = models.CharField(max_length=50, blank=True)
    category = models.ForeignKey(Category, null=True, blank=True, on_delete=models.SET_NULL)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.url or self.get_source_display()


class Candidate(models.Model):
    """An image proposed for labelling for a category (by upload, similarity search,
    sequence import …); the label grid shows a category's candidates."""

    category = models.ForeignKey(Category, on_delete=models.CASCADE, related_name="candidates")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="+")
    source = models.CharField(max_length=20, choices=Source.choices)
    score = models.FloatField(null=True, blank=True, help_text="Distance or score, if any.")
    added_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    added_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["category", "image"], name="candidate_unique")
        ]
        indexes = [models.Index(fields=["category", "-added_at"], name="candidate_recent")]

    def __str__(self) -> str:
        return f"candidate image {self.image_id} for category {self.category_id}"


class FaceCluster(models.Model):
    """A group of similar faces among the images acquired for a person (agglomerative
    clustering, cosine): the annotator labels a whole cluster at once, then corrects single
    faces. Clusters are recomputed per category; labels live on the faces, not here."""

    category = models.ForeignKey(Category, on_delete=models.CASCADE, related_name="face_clusters")
    number = models.PositiveIntegerField(help_text="1 = largest cluster.")
    size = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["category", "number"]
        constraints = [
            models.UniqueConstraint(fields=["category", "number"], name="face_cluster_unique")
        ]

    def __str__(self) -> str:
        return f"cluster {self.number} of {self.category}"


class FaceClusterMember(models.Model):
    cluster = models.ForeignKey(FaceCluster, on_delete=models.CASCADE, related_name="members")
    face = models.ForeignKey(Face, on_delete=models.CASCADE, related_name="+")
    distance = models.FloatField(default=0.0, help_text="Cosine distance to the cluster mean.")

    class Meta:
        ordering = ["cluster", "distance"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "face"], name="face_cluster_member_unique")
        ]

    def __str__(self) -> str:
        return f"face {self.face_id} in cluster {self.cluster_id}"
