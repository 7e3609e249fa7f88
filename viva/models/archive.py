"""The archive: collections → videos → shots → images (keyframes and stills) → faces."""

from __future__ import annotations

from django.db import models


class Collection(models.Model):
    """A set of images with one origin: an archive's keyframes, web images, uploads."""

    class Kind(models.TextChoices):
        ARCHIVE = "archive", "Video archive"
        STILLS = "stills", "Still images"
        WEB = "web", "Web images"
        UPLOAD = "upload", "Uploads"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.ARCHIVE)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Video(models.Model):
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="videos")
    title = models.CharField(max_length=500)
    file = models.CharField(max_length=1000, help_text="Path relative to the media root.")
    original_name = models.CharField(max_length=500, blank=True)
    sha256 = models.CharField(max_length=64, unique=True)
    size_bytes = models.BigIntegerField(default=0)
    date = models.DateField(null=True, blank=True)
    year = models.PositiveSmallIntegerField(null=True, blank=True, db_index=True)
    fps = models.FloatField()
    n_frames = models.PositiveIntegerField()
    duration_ms = models.PositiveIntegerField()
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["title", "id"]

    def __str__(self) -> str:
        return self.title

    def frame_to_ms(self, frame: int) -> int:
        return round(frame * 1000 / self.fps) if self.fps else 0


class Shot(models.Model):
    video = models.ForeignKey(Video, on_delete=models.CASCADE, related_name="shots")
    number = models.PositiveIntegerField()
    start_frame = models.PositiveIntegerField()
    end_frame = models.PositiveIntegerField(help_text="Inclusive.")
    start_ms = models.PositiveIntegerField()
    end_ms = models.PositiveIntegerField()

    class Meta:
        ordering = ["video", "number"]
        constraints = [
            models.UniqueConstraint(fields=["video", "number"], name="shot_unique_number")
        ]

    def __str__(self) -> str:
        return f"{self.video} · shot {self.number}"


class Image(models.Model):
    """A keyframe of a video or a still image; the unit that gets labelled and searched.

    Keyframes are unique per (video, frame); stills are unique by sha256 (identical
    keyframes of different videos stay apart: they are different moments of the archive).
    """

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="images")
    file = models.CharField(max_length=1000, help_text="Path relative to the media root.")
    thumbnail = models.CharField(max_length=1000, blank=True)
    sha256 = models.CharField(max_length=64, db_index=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    video = models.ForeignKey(
        Video, null=True, blank=True, on_delete=models.CASCADE, related_name="keyframes"
    )
    shot = models.ForeignKey(
        Shot, null=True, blank=True, on_delete=models.CASCADE, related_name="keyframes"
    )
    frame = models.PositiveIntegerField(null=True, blank=True)
    time_ms = models.PositiveIntegerField(null=True, blank=True)
    original_name = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    faces_scanned_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When face detection last ran on this image (None: not yet).",
    )

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["video", "frame"],
                condition=models.Q(video__isnull=False),
                name="image_unique_keyframe",
            ),
            # Stills are one row per content: two downloads of the same picture meet here.
            models.UniqueConstraint(
                fields=["sha256"],
                condition=models.Q(video__isnull=True),
                name="image_unique_still",
            ),
        ]

    def __str__(self) -> str:
        if self.video_id:
            return f"{self.video} @ {self.time_ms} ms"
        return self.original_name or f"image {self.pk}"

    @property
    def is_keyframe(self) -> bool:
        return self.video_id is not None


class Face(models.Model):
    """A detected face; boxes are in pixels of the image (filled by the person pipeline)."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="faces")
    box = models.JSONField(help_text="[x1, y1, x2, y2] in image pixels.")
    landmarks = models.JSONField(null=True, blank=True)
    score = models.FloatField()
    quality = models.FloatField(null=True, blank=True)
    thumbnail = models.CharField(max_length=1000, blank=True)
    embedding = models.BinaryField(null=True, blank=True, help_text="float16 × 512.")
    embedder = models.CharField(
        max_length=40,
        blank=True,
        help_text="Which embedding weights made the embedding ('vggface2', 'random', …).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    EMBEDDING_DIM = 512

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"face {self.pk} in image {self.image_id}"

    # Embeddings are stored as float16 bytes (1 KiB per face): compact enough for
    # millions of faces, exact enough to rebuild the face index and retrain persons.
    @staticmethod
    def pack_embedding(vector) -> bytes:
        """float16 bytes of a 512-d vector (any float dtype)."""
        import numpy as np

        arr = np.asarray(vector, dtype=np.float16).reshape(-1)
        if arr.size != Face.EMBEDDING_DIM:
            raise ValueError(f"A face embedding has {Face.EMBEDDING_DIM} values, not {arr.size}.")
        return arr.tobytes()

    @staticmethod
    def unpack_embeddings(blobs) -> np.ndarray:  # noqa: F821 - numpy imported lazily
        """float32 array (n, 512) from stored blobs (rows without embedding are refused)."""
        import numpy as np

        blobs = list(blobs)
        if not blobs:
            return np.zeros((0, Face.EMBEDDING_DIM), dtype=np.float32)
        raw = b"".join(bytes(b) for b in blobs)
        return np.frombuffer(raw, dtype=np.float16).reshape(len(blobs), -1).astype(np.float32)

    def vector(self):
        """This face's embedding as float32 (512,), or None when it has none."""
        if self.embedding is None:
            return None
        return self.unpack_embeddings([self.embedding])[0]
