"""The training set of person recognition, read from face labels (thesis 6.3.3).

A face is an example of person P when it carries a *positive face annotation* for P
(the category's kind is ``person``) and has an embedding. Persons with at least
``VIVA_PERSON_MIN_FACES`` such faces are eligible; each contributes at most
``VIVA_PERSON_MAX_FACES`` faces, drawn with a seeded random subsample so a famous face
with 5,000 labels does not drown the others (the thesis trains on ≤ 100 faces per person).

Faces labelled *negative* for some person and positive for none are "unknown" faces:
they are never a class, but they calibrate the rejection threshold (a face of nobody we
know must be rejected, not given to the nearest person). A face labelled positive for
two persons is a labelling conflict and left out.

Only the web process' cheap parts are here: numpy, no torch.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.db.models import BooleanField, ExpressionWrapper, Q

from annotation.clustering import majority_embedder
from annotation.models import Annotation, Category, Label
from retrieval.face_search.index import normalise  # unit rows; svm.py imports it from here
from viva.models import Face

from ..errors import TrainingError

MAX_UNKNOWN_FACES = 2000  # enough to calibrate a threshold; more only costs time


def min_faces() -> int:
    return int(getattr(settings, "VIVA_PERSON_MIN_FACES", 10))


def max_faces() -> int:
    return int(getattr(settings, "VIVA_PERSON_MAX_FACES", 100))


@dataclass
class PersonStatus:
    """One row of the persons page: how many usable faces a person has."""

    category_id: int
    name: str
    faces: int  # positive faces with an embedding
    unembedded: int  # positive faces still waiting for an embedding
    needed: int  # the eligibility threshold

    @property
    def eligible(self) -> bool:
        return self.faces >= self.needed

    @property
    def missing(self) -> int:
        return max(0, self.needed - self.faces)


@dataclass
class PersonDataset:
    """Embeddings (L2-normalised) with class indices, plus the unknown faces."""

    x: np.ndarray
    y: np.ndarray
    face_ids: np.ndarray
    classes: list[dict]  # [{index, id, name, faces (all), used}]
    unknown_x: np.ndarray
    unknown_face_ids: np.ndarray
    statuses: list[PersonStatus] = field(default_factory=list)
    embedders: dict[str, int] = field(default_factory=dict)  # chosen faces per embedder
    conflicts: int = 0
    embedder: str = ""  # the one embedder whose faces were kept (``Face.embedder``)
    other_embedder: int = 0  # chosen faces left out: embedded by another embedder


def _face_labels() -> tuple[dict[int, set[int]], set[int], dict[int, str]]:
    """``(positive person ids per face, faces with a negative person label, faces with
    an embedding → their embedder)`` — one query over the person face labels (joined to
    the face, so no list of ids is sent back to the database)."""
    rows = (
        Annotation.objects.filter(face__isnull=False, category__kind=Category.Kind.PERSON)
        .annotate(
            embedded=ExpressionWrapper(
                Q(face__embedding__isnull=False), output_field=BooleanField()
            )
        )
        .values_list("face_id", "category_id", "value", "embedded", "face__embedder")
    )
    positive: dict[int, set[int]] = defaultdict(set)
    negative: set[int] = set()
    embedded: dict[int, str] = {}
    for face_id, category_id, value, has_embedding, embedder in rows.iterator(chunk_size=10000):
        if has_embedding:
            embedded[face_id] = embedder or ""
        if value == Label.POSITIVE:
            positive[face_id].add(category_id)
        elif value == Label.NEGATIVE:
            negative.add(face_id)
    return positive, negative, embedded


def person_statuses(needed: int | None = None) -> list[PersonStatus]:
    """Every person category with its usable face count, eligible ones first."""
    needed = min_faces() if needed is None else needed
    positive, _negative, embedded = _face_labels()
    counts: Counter[int] = Counter()
    waiting: Counter[int] = Counter()
    for face_id, persons in positive.items():
        if len(persons) != 1:
            continue
        (person,) = persons
        (counts if face_id in embedded else waiting)[person] += 1
    statuses = [
        PersonStatus(pk, name, counts[pk], waiting[pk], needed)
        for pk, name in Category.objects.filter(kind=Category.Kind.PERSON).values_list("pk", "name")
    ]
    statuses.sort(key=lambda s: (not s.eligible, -s.faces, s.name.lower()))
    return statuses


def not_enough_message(statuses: list[PersonStatus], needed: int) -> str:
    """The refusal text for fewer than two eligible persons: who needs how many more."""
    eligible = [s for s in statuses if s.eligible]
    lines = [
        "Person recognition needs at least two persons with "
        f"{needed} or more labelled faces each; {len(eligible)} "
        f"{'has' if len(eligible) == 1 else 'have'} enough."
    ]
    short = [s for s in statuses if not s.eligible]
    if short:
        wants = ", ".join(f"{s.name} needs {s.missing} more" for s in short[:8])
        lines.append(f"Label more faces: {wants}{' …' if len(short) > 8 else ''}.")
    elif not statuses:
        lines.append("There is no person category yet; create persons and label their faces.")
    return " ".join(lines)


def _embeddings(face_ids: list[int]) -> tuple[np.ndarray, list[int], list[str]]:
    """Embeddings of ``face_ids`` in that order (faces deleted meanwhile are dropped), with
    each kept face's embedder."""
    found: dict[int, tuple[bytes, str]] = {}
    for start in range(0, len(face_ids), 5000):
        part = face_ids[start : start + 5000]
        for pk, blob, embedder in Face.objects.filter(
            pk__in=part, embedding__isnull=False
        ).values_list("pk", "embedding", "embedder"):
            found[pk] = (blob, embedder)
    kept = [pk for pk in face_ids if pk in found]
    x = Face.unpack_embeddings(found[pk][0] for pk in kept)
    return normalise(x), kept, [found[pk][1] for pk in kept]


def _only(
    embedder: str, x: np.ndarray, kept: list[int], kinds: list[str]
) -> tuple[np.ndarray, list[int]]:
    """The rows of ``x`` / ``kept`` whose embedder is ``embedder``."""
    mask = np.array([k == embedder for k in kinds], dtype=bool)
    return x[mask] if len(x) else x, [f for f, ok in zip(kept, mask.tolist(), strict=True) if ok]


def load_dataset(
    *, needed: int | None = None, cap: int | None = None, seed: int = 0
) -> PersonDataset:
    """The balanced training set; :class:`TrainingError` with fewer than two eligible
    persons (the message lists who needs how many more faces)."""
    needed = min_faces() if needed is None else int(needed)
    cap = max_faces() if cap is None else int(cap)
    statuses = person_statuses(needed)
    eligible = [s for s in statuses if s.eligible]
    if len(eligible) < 2:
        raise TrainingError(not_enough_message(statuses, needed))
    positive, negative, embedded = _face_labels()
    by_person: dict[int, list[int]] = defaultdict(list)
    conflicts = 0
    for face_id, persons in positive.items():
        if len(persons) > 1:
            conflicts += 1
        elif face_id in embedded:
            by_person[next(iter(persons))].append(face_id)
    # Embeddings of different weights ("random" vs "vggface2") are not comparable: an SVM
    # trained on both learns noise. Only the most common embedder's faces are used, and
    # a person is eligible with enough faces of that embedder.
    usable = [f for faces in by_person.values() for f in faces]
    embedders = Counter(embedded[f] or "unknown" for f in usable)
    embedder = majority_embedder(embedded[f] for f in usable)
    other_embedder = sum(1 for f in usable if embedded[f] != embedder)
    if other_embedder:
        by_person = defaultdict(
            list,
            {p: [f for f in faces if embedded[f] == embedder] for p, faces in by_person.items()},
        )
        eligible = [s for s in eligible if len(by_person[s.category_id]) >= needed]
        if len(eligible) < 2:
            raise TrainingError(
                f"Person recognition needs at least two persons with {needed} or more "
                f"labelled faces embedded by the same weights; with '{embedder or 'unknown'}' "
                f"(the most common) {len(eligible)} "
                f"{'has' if len(eligible) == 1 else 'have'} enough. Faces per embedder: "
                f"{dict(embedders)}; embed the faces again with one embedder."
            )
    rng = np.random.default_rng(seed)
    eligible.sort(key=lambda s: s.name.lower())
    classes, chosen, labels = [], [], []
    for index, status in enumerate(eligible):
        faces = sorted(by_person[status.category_id])
        picked = faces if len(faces) <= cap else sorted(rng.choice(faces, cap, replace=False))
        classes.append(
            {"index": index, "id": status.category_id, "name": status.name, "faces": len(faces)}
        )
        chosen += [int(f) for f in picked]
        labels += [index] * len(picked)
    x, kept, kinds = _embeddings(chosen)
    x, kept = _only(embedder, x, kept, kinds)  # faces embedded again meanwhile
    label_of = dict(zip(chosen, labels, strict=True))
    y = np.array([label_of[f] for f in kept], dtype=np.int64)
    used = Counter(y.tolist())
    for c in classes:
        c["used"] = int(used.get(c["index"], 0))
    if sum(1 for c in classes if c["used"] >= 2) < 2:
        raise TrainingError(not_enough_message(person_statuses(needed), needed))
    unknown = sorted(f for f in negative if f not in positive and embedded.get(f, None) == embedder)
    if len(unknown) > MAX_UNKNOWN_FACES:
        unknown = sorted(rng.choice(unknown, MAX_UNKNOWN_FACES, replace=False).tolist())
    ux, ukept, ukinds = _embeddings([int(f) for f in unknown])
    ux, ukept = _only(embedder, ux, ukept, ukinds)
    return PersonDataset(
        x=x,
        y=y,
        face_ids=np.array(kept, dtype=np.int64),
        classes=classes,
        unknown_x=ux,
        unknown_face_ids=np.array(ukept, dtype=np.int64),
        statuses=statuses,
        embedders=dict(embedders),
        conflicts=conflicts,
        embedder=embedder,
        other_embedder=other_embedder,
    )
