"""Face clusters of a person: group the faces of the images acquired for a person so an
annotator labels whole clusters at once, then corrects single faces.

Why (thesis, section 6.3.3): web images found for a name show the person, but also
people standing next to them and other people of the same name. Labelling every face
one by one is slow; grouping the faces by their FaceNet embeddings with agglomerative
clustering (cosine distance) lets the annotator accept or reject a whole group with one
key, and the original VIVA needs at most about 100 clusters per person.

Choices:

* **Average linkage, cosine distance, a distance threshold** (scikit-learn's
  ``AgglomerativeClustering``): the threshold is set low
  (:data:`DEFAULT_DISTANCE_THRESHOLD`, setting ``VIVA_PERSON_CLUSTER_DISTANCE``) so
  clusters are *pure* — splitting one person into two clusters costs one more key
  press, merging two people into one cluster costs a wrong label on every face of one
  of them.
* **At most** ``VIVA_PERSON_MAX_CLUSTERS`` **clusters**: when the threshold leaves more,
  the same tree is cut at that many clusters (the closest clusters are merged further),
  so the effort per person stays bounded.
* **At most** :data:`DEFAULT_MAX_FACES` **faces are clustered** (``VIVA_PERSON_CLUSTER_MAX_FACES``;
  average linkage needs all pairwise distances, quadratic in memory and time); the best
  faces by detector quality go in, the others join the cluster with the nearest mean.
* Faces embedded by different weights (``Face.embedder``) are not comparable; only the
  most common embedder's faces are clustered.
* Clusters are replaced atomically: readers see either the old or the new clusters.
  Labels live on faces (``Annotation.face``), never on clusters, so clustering again
  never loses a label.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, QuerySet

from viva.models import Face, Image

from .models import Candidate, Category, FaceCluster, FaceClusterMember, ImageOrigin

log = logging.getLogger(__name__)

# Cosine distance between clusters (average linkage) below which faces are merged.
# FaceNet (VGGFace2) faces of one person lie mostly within 0.3–0.5 of each other and
# different people at 0.7–1.1; 0.4 keeps clusters pure at the price of a few more of them.
DEFAULT_DISTANCE_THRESHOLD = 0.4
DEFAULT_MAX_FACES = 5000


def distance_threshold() -> float:
    return float(getattr(settings, "VIVA_PERSON_CLUSTER_DISTANCE", DEFAULT_DISTANCE_THRESHOLD))


def max_clusters() -> int:
    return max(1, int(getattr(settings, "VIVA_PERSON_MAX_CLUSTERS", 100)))


def max_faces() -> int:
    return max(2, int(getattr(settings, "VIVA_PERSON_CLUSTER_MAX_FACES", DEFAULT_MAX_FACES)))


# --------------------------------------------------------------------------- what to cluster


def acquired_images(category: Category | int) -> QuerySet:
    """Images acquired for the category: its candidates and images it is an origin of."""
    pk = category.pk if isinstance(category, Category) else int(category)
    in_candidates = Candidate.objects.filter(category_id=pk).values("image_id")
    in_origins = ImageOrigin.objects.filter(category_id=pk).values("image_id")
    return Image.objects.filter(Q(pk__in=in_candidates) | Q(pk__in=in_origins))


def person_faces(category: Category | int) -> QuerySet:
    """Faces found in the category's acquired images (with or without embedding)."""
    return Face.objects.filter(image__in=acquired_images(category).values("pk"))


@dataclass
class AcquisitionStatus:
    """What the cluster page's status line shows."""

    images: int
    scanned: int
    faces: int
    embedded: int
    clustered: int

    @property
    def pending(self) -> int:
        return self.images - self.scanned

    @property
    def unclustered(self) -> int:
        """Embedded faces that are in no cluster yet (new images since the last run)."""
        return max(0, self.embedded - self.clustered)


def acquisition_status(category: Category) -> AcquisitionStatus:
    images = acquired_images(category)
    faces = person_faces(category)
    return AcquisitionStatus(
        images=images.count(),
        scanned=images.filter(faces_scanned_at__isnull=False).count(),
        faces=faces.count(),
        embedded=faces.filter(embedding__isnull=False).count(),
        clustered=FaceClusterMember.objects.filter(cluster__category=category).count(),
    )


def pending_image_ids(category: Category) -> list[int]:
    """Acquired images that face detection has not looked at yet."""
    return list(
        acquired_images(category)
        .filter(faces_scanned_at__isnull=True)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


# --------------------------------------------------------------------------- the algorithm


def majority_embedder(embedders: Iterable[str]) -> str:
    """The most common ``Face.embedder`` value (``""`` for none). Embeddings of different
    weights are not comparable: clustering, person training and face search each use one
    embedder's faces only, this one."""
    counts = Counter(embedders)
    return counts.most_common(1)[0][0] if counts else ""


def cluster_embeddings(
    vectors,
    *,
    threshold: float | None = None,
    limit: int | None = None,
):
    """Cluster labels ``0..k-1`` for ``vectors`` (n, d): average linkage, cosine distance.

    Cut at ``threshold`` (cosine distance); if that leaves more than ``limit`` clusters,
    the same tree is cut at ``limit`` clusters instead (closest clusters merged further).
    Rows must have a non-zero norm.
    """
    import numpy as np
    from sklearn.cluster import AgglomerativeClustering

    threshold = distance_threshold() if threshold is None else float(threshold)
    limit = max_clusters() if limit is None else max(1, int(limit))
    vectors = np.asarray(vectors, dtype=np.float64)
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    model = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=threshold
    ).fit(vectors)
    if model.n_clusters_ > limit:
        model = AgglomerativeClustering(n_clusters=limit, metric="cosine", linkage="average").fit(
            vectors
        )
    return model.labels_.astype(np.int64)


@dataclass
class _Group:
    face_ids: list[int]
    distances: list[float]


def _groups(face_ids: list[int], vectors, labels, extra_ids: list[int], extra_vectors):
    """Clusters with each face's cosine distance to its cluster's mean direction.

    ``extra`` faces (beyond the clustering limit) join the cluster with the nearest mean.
    """
    import numpy as np

    from retrieval.face_search.index import normalise  # numpy only (faiss lazily)

    vectors = normalise(vectors)
    k = int(labels.max()) + 1 if len(labels) else 0
    means = np.zeros((k, vectors.shape[1]))
    np.add.at(means, labels, vectors)
    means = normalise(means)
    all_ids = list(face_ids)
    all_labels = list(labels)
    all_vectors = vectors
    if len(extra_ids):
        extra_vectors = normalise(extra_vectors)
        nearest = np.argmax(extra_vectors @ means.T, axis=1)
        all_ids += list(extra_ids)
        all_labels += list(nearest)
        all_vectors = np.vstack([vectors, extra_vectors])
    labels_arr = np.asarray(all_labels, dtype=np.int64)
    distances = 1.0 - np.sum(all_vectors * means[labels_arr], axis=1)
    groups = [_Group([], []) for _ in range(k)]
    for face_id, label, dist in zip(all_ids, labels_arr, distances, strict=True):
        groups[label].face_ids.append(int(face_id))
        groups[label].distances.append(max(0.0, float(dist)))
    # Largest first; equal sizes: the tighter cluster first (more likely one person).
    groups.sort(key=lambda g: (-len(g.face_ids), sum(g.distances) / len(g.face_ids)))
    return groups


def _load_embeddings(category: Category) -> tuple[list[int], object, list[int], object, int]:
    """Face ids and vectors to cluster, the overflow beyond the limit, and faces skipped."""
    import numpy as np

    rows = list(
        person_faces(category)
        .filter(embedding__isnull=False)
        # Best faces first so the clustered subset (if limited) is the reliable one.
        .order_by(F("quality").desc(nulls_last=True), "pk")
        .values_list("pk", "embedding", "embedder")
    )
    if not rows:
        empty = np.zeros((0, Face.EMBEDDING_DIM), dtype=np.float32)
        return [], empty, [], empty, 0
    embedder = majority_embedder(r[2] for r in rows)
    kept = [r for r in rows if r[2] == embedder]
    skipped = len(rows) - len(kept)
    vectors = Face.unpack_embeddings(r[1] for r in kept)
    ok = np.linalg.norm(vectors, axis=1) > 1e-6
    ok &= np.all(np.isfinite(vectors), axis=1)
    skipped += int((~ok).sum())
    ids = [r[0] for r, good in zip(kept, ok, strict=True) if good]
    vectors = vectors[ok]
    limit = max_faces()
    return ids[:limit], vectors[:limit], ids[limit:], vectors[limit:], skipped


def build_clusters(
    category: Category,
    *,
    threshold: float | None = None,
    limit: int | None = None,
) -> list[FaceCluster]:
    """Cluster the embedded faces of ``category``'s acquired images and store the result.

    Replaces the category's clusters in one transaction (old clusters vanish only when
    the new ones are written). Returns the new clusters, largest first (``number`` 1..k);
    each member's ``distance`` is its cosine distance to the cluster mean.
    """
    ids, vectors, extra_ids, extra_vectors, skipped = _load_embeddings(category)
    if skipped:
        log.info("clustering %s: %d face(s) skipped (other embedder or empty)", category, skipped)
    labels = cluster_embeddings(vectors, threshold=threshold, limit=limit)
    groups = _groups(ids, vectors, labels, extra_ids, extra_vectors) if ids else []
    with transaction.atomic():
        # Lock the category: two "cluster again" clicks write one after the other.
        locked = Category.objects.select_for_update().filter(pk=category.pk).first()
        if locked is None:
            raise Category.DoesNotExist("The category was deleted meanwhile.")
        FaceCluster.objects.filter(category=category).delete()
        clusters = FaceCluster.objects.bulk_create(
            FaceCluster(category=category, number=i + 1, size=len(g.face_ids))
            for i, g in enumerate(groups)
        )
        # Faces deleted while we computed would break the foreign key: keep only live ones.
        alive = set(Face.objects.filter(pk__in=ids + list(extra_ids)).values_list("pk", flat=True))
        members = [
            FaceClusterMember(cluster=cluster, face_id=face_id, distance=dist)
            for cluster, g in zip(clusters, groups, strict=True)
            for face_id, dist in zip(g.face_ids, g.distances, strict=True)
            if face_id in alive
        ]
        FaceClusterMember.objects.bulk_create(members, batch_size=2000)
        if len(alive) != len(ids) + len(extra_ids):
            for cluster in clusters:
                cluster.size = sum(1 for m in members if m.cluster is cluster)
            FaceCluster.objects.bulk_update(clusters, ["size"])
    return clusters


# --------------------------------------------------------------------------- labelling


@dataclass
class ClusterLabelResult:
    """What labelling a whole cluster did; ``kept`` faces had a label set one by one."""

    saved: int
    unchanged: int
    kept: int
    faces: int

    def as_dict(self) -> dict:
        return {
            "saved": self.saved,
            "unchanged": self.unchanged,
            "kept": self.kept,
            "faces": self.faces,
        }


def label_cluster(
    cluster: FaceCluster,
    value: int | None,
    *,
    user=None,
    overwrite: bool = False,
) -> ClusterLabelResult:
    """Give every face of ``cluster`` the label ``value`` (``None`` removes cluster labels).

    Faces whose label was set one by one (grid, review, feedback …: any source other than
    "cluster") keep it unless ``overwrite``: a correction is worth more than a cluster's
    majority, and labelling a cluster again must not undo corrections silently. Saved
    through :func:`annotation.labels.save_face_labels` (source "cluster": event log,
    category lock against concurrent annotators).
    """
    from .labels import MAX_BATCH, save_face_labels
    from .models import Annotation, Source

    face_ids = list(cluster.members.values_list("face_id", flat=True))
    individual = set()
    if not overwrite:
        individual = set(
            Annotation.objects.filter(category_id=cluster.category_id, face_id__in=face_ids)
            .exclude(source=Source.CLUSTER)
            .values_list("face_id", flat=True)
        )
    changes = [(face_id, value) for face_id in face_ids if face_id not in individual]
    # save_face_labels refuses more than MAX_BATCH changes at once: a big cluster is saved
    # in slices (each slice its own transaction, logged like any other batch).
    saved = unchanged = 0
    for start in range(0, len(changes), MAX_BATCH):
        part = changes[start : start + MAX_BATCH]
        result = save_face_labels(cluster.category_id, part, user=user, source=Source.CLUSTER)
        saved += result.saved
        unchanged += result.unchanged
    return ClusterLabelResult(
        saved=saved, unchanged=unchanged, kept=len(individual), faces=len(face_ids)
    )


def cluster_overview(category: Category, samples: int = 8) -> list[dict]:
    """The clusters of ``category`` with label counts and the ``samples`` most typical faces.

    Two queries whatever the number of clusters: counts per cluster (conditional
    aggregates over the members' face labels) and the sample faces (a window function
    ranks members by distance to the mean within each cluster).
    """
    from django.db.models import Count, Window
    from django.db.models.functions import RowNumber

    def labelled(value: int) -> Count:
        return Count(
            "members",
            filter=Q(
                members__face__annotations__category=category,
                members__face__annotations__value=value,
            ),
        )

    clusters = list(
        FaceCluster.objects.filter(category=category)
        .order_by("number")
        .annotate(positive=labelled(1), negative=labelled(-1), neutral=labelled(0))
        .values("pk", "number", "size", "created_at", "positive", "negative", "neutral")
    )
    ranked = (
        FaceClusterMember.objects.filter(cluster__category=category)
        .annotate(
            rank=Window(RowNumber(), partition_by="cluster_id", order_by=["distance", "face_id"])
        )
        .filter(rank__lte=samples)
        .values(
            "cluster_id",
            "face_id",
            "distance",
            "face__thumbnail",
            "face__box",
            "face__image_id",
            "face__image__file",
            "face__image__thumbnail",
            "face__image__width",
            "face__image__height",
            "face__image__original_name",
        )
        .order_by("cluster_id", "rank")
    )
    by_cluster: dict[int, list[dict]] = {}
    for row in ranked:
        by_cluster.setdefault(row["cluster_id"], []).append(row)
    for cluster in clusters:
        cluster["samples"] = by_cluster.get(cluster["pk"], [])
        cluster["unlabelled"] = max(
            0, cluster["size"] - cluster["positive"] - cluster["negative"] - cluster["neutral"]
        )
    return clusters
