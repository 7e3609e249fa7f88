"""Synthetic faces of known identities for the person tests.

Each identity is a random direction on the 512-d unit sphere; its faces are that
direction plus Gaussian noise, normalised (cosine to the centre ≈ 0.74 with the default
noise), stored as float16 like real embeddings. Unknown identities are further random
directions. Every face sits in its own keyframe of a video of the given year.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from annotation.labels import save_face_labels
from annotation.models import Category, Label, Source
from viva.models import Collection, Face, Image, Shot, Video

DIM = Face.EMBEDDING_DIM


def identity_centres(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n, DIM))
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def sample_faces(centre: np.ndarray, n: int, rng, noise: float = 0.9) -> np.ndarray:
    """Noise of norm ≈ ``noise``: two faces of one person have cosine ≈ 1 / (1 + noise²)
    (≈ 0.55 at 0.9, like FaceNet embeddings of one person); strangers ≈ 0."""
    x = centre[None, :] + rng.normal(size=(n, DIM)) * noise / np.sqrt(DIM)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


_video_counter = [0]


def make_video(title: str = "News", year: int | None = 1975) -> Video:
    collection, _ = Collection.objects.get_or_create(name="Archive")
    _video_counter[0] += 1
    number = Video.objects.count() + _video_counter[0] * 1000
    return Video.objects.create(
        collection=collection,
        title=title,
        file=f"videos/p{number}.mp4",
        sha256=f"{number:064x}",
        fps=25,
        n_frames=100000,
        duration_ms=4000000,
        width=64,
        height=48,
        year=year,
    )


def add_faces(video: Video, vectors: np.ndarray, *, embedder: str = "random") -> list[Face]:
    """One keyframe per face (consecutive frames of one shot each)."""
    faces = []
    start = Image.objects.filter(video=video).count()
    for i, vec in enumerate(vectors):
        frame = (start + i) * 10
        shot = Shot.objects.create(
            video=video,
            number=start + i + 1,
            start_frame=frame,
            end_frame=frame + 9,
            start_ms=frame * 40,
            end_ms=frame * 40 + 360,
        )
        image = Image.objects.create(
            collection=video.collection,
            video=video,
            shot=shot,
            frame=frame,
            time_ms=frame * 40 + 40,
            file=f"keyframes/v{video.pk}/{frame}.jpg",
            thumbnail=f"keyframes/v{video.pk}/{frame}_t.jpg",
            sha256=f"{video.pk:032x}{frame:032x}",
            width=64,
            height=48,
        )
        faces.append(
            Face.objects.create(
                image=image,
                box=[4, 4, 30, 36],
                score=0.99,
                thumbnail=f"faces/{image.pk}.jpg",
                embedding=Face.pack_embedding(vec),
                embedder=embedder,
            )
        )
    return faces


@dataclass
class PersonWorld:
    persons: dict[str, Category]
    labelled: dict[str, list[Face]]  # training faces (positive labels)
    unlabelled: dict[str, list[Face]]  # further faces of each person, no label
    unknown_labelled: list[Face]  # strangers labelled negative
    unknown_unlabelled: list[Face]  # strangers nobody labelled (must be rejected)
    videos: dict[str, Video] = field(default_factory=dict)


def make_world(
    counts: dict[str, int],
    *,
    unlabelled_each: int = 6,
    unknown_labelled: int = 30,
    unknown_unlabelled: int = 20,
    seed: int = 1,
    year: int | None = 1975,
    noise: float = 0.9,
) -> PersonWorld:
    """Persons with ``counts[name]`` positively labelled faces each, more unlabelled
    faces of them, and strangers (some labelled negative, some not)."""
    rng = np.random.default_rng(seed)
    names = list(counts)
    n_strangers = unknown_labelled + unknown_unlabelled
    centres = identity_centres(len(names) + n_strangers, seed)
    video = make_video("Evening news", year)
    persons, labelled, unlabelled = {}, {}, {}
    for i, name in enumerate(names):
        persons[name] = Category.objects.create(name=name, kind=Category.Kind.PERSON)
        faces = add_faces(
            video, sample_faces(centres[i], counts[name] + unlabelled_each, rng, noise)
        )
        labelled[name], unlabelled[name] = faces[: counts[name]], faces[counts[name] :]
        if counts[name]:
            save_face_labels(
                persons[name],
                [(f.pk, Label.POSITIVE) for f in labelled[name]],
                source=Source.GRID,
            )
    # Each stranger is its own identity: one face per stranger.
    strangers = add_faces(video, sample_faces_many(centres[len(names) :], rng, noise))
    known_negative, unseen = strangers[:unknown_labelled], strangers[unknown_labelled:]
    if known_negative and persons:
        first = next(iter(persons.values()))
        save_face_labels(first, [(f.pk, Label.NEGATIVE) for f in known_negative])
    return PersonWorld(persons, labelled, unlabelled, known_negative, unseen, {"news": video})


def sample_faces_many(centres: np.ndarray, rng, noise: float) -> np.ndarray:
    if not len(centres):
        return np.zeros((0, DIM))
    return np.vstack([sample_faces(c, 1, rng, noise) for c in centres])
