"""The demo archive: a few synthetic videos and some stills, built offline in seconds.

Why: ``make run`` must show a working archive on a fresh machine with no network
(DESIGN.md sections 3 and 6). The videos are made by :mod:`viva.ingest.synth` from the
pictures that ship with scikit-image, so their cuts are known; they go through the real
import job (shot detection, keyframes, thumbnails), run inline so the jobs page shows
the demo import like any other. Everything here is idempotent: a second run finds the
source files in ``var/demo/`` and the rows in the database and does nothing.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from .jobs.registry import get_kind
from .jobs.runner import run_job, start_job
from .media import sha256_file
from .models import Collection, Image, Job, Profile, Video
from .models.users import Role

DEMO_ARCHIVE = "Demo archive"
DEMO_STILLS = "Stills"
DEMO_ADMIN = "admin"
DEMO_ROLE_USERS = {
    "researcher": Role.RESEARCHER,
    "annotator": Role.ANNOTATOR,
    "trainer": Role.TRAINER,
}

Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoVideo:
    slug: str
    title: str
    year: int
    date: str
    n_scenes: int
    fade_every: int
    seed: int
    monochrome_share: float
    opening: int  # scene variant of the first shot: the picture the overview shows
    description: str


# Openings: variants 0–4 are the full astronaut, camera, coffee, chelsea and rocket pictures
# (viva.ingest.synth._BASE_IMAGES), nicer on the overview page than the texture scenes.
DEMO_VIDEOS: tuple[DemoVideo, ...] = (
    DemoVideo(
        "harbour_lights_1958",
        "Harbour Lights",
        1958,
        "1958-09-14",
        8,
        0,
        11,
        1.0,
        1,
        "Black-and-white newsreel: hard cuts only.",
    ),
    DemoVideo(
        "evening_news_1987",
        "Evening News",
        1987,
        "1987-03-02",
        10,
        0,
        12,
        0.3,
        4,
        "News magazine: hard cuts, fast camera moves.",
    ),
    DemoVideo(
        "city_chronicle_1994",
        "City Chronicle",
        1994,
        "1994-06-21",
        9,
        3,
        13,
        0.2,
        3,
        "Documentary: cuts, dissolves and fades through black.",
    ),
    DemoVideo(
        "science_magazine_2006",
        "Science Magazine",
        2006,
        "2006-11-08",
        8,
        4,
        14,
        0.0,
        0,
        "Colour magazine: cuts and a few gradual transitions.",
    ),
)

# Pictures bundled with scikit-image (no download needed). astronaut and camera show faces.
DEMO_STILL_NAMES: tuple[str, ...] = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "coins",
)


@dataclass
class DemoReport:
    videos_imported: int = 0
    stills_imported: int = 0
    errors: int = 0
    skipped: bool = False
    admin_password: str | None = None
    user_passwords: dict[str, str] | None = None
    worker_job_id: int | None = None
    index_job_id: int | None = None


# --- jobs run in this process ---------------------------------------------------------------
def create_job_row(kind: str, params: dict, *, title: str = "", user=None) -> Job:
    """A queued Job row that is *not* sent to the broker (for running it in-process)."""
    spec = get_kind(kind)
    return Job.objects.create(
        kind=kind,
        title=title or spec.label.capitalize(),
        params=params,
        queue=spec.queue,
        created_by=user if user is not None and user.is_authenticated else None,
    )


def run_job_inline(kind: str, params: dict, *, title: str = "", user=None) -> Job:
    """Run a job synchronously in this process; the row appears on the jobs page as usual.

    Used by the demo builder and by ``import_videos --sync`` / ``import_images --sync``.
    """
    job = create_job_row(kind, params, title=title, user=user)
    run_job(job.pk)
    job.refresh_from_db()
    return job


# --- source files -------------------------------------------------------------------------------
def demo_dir() -> Path:
    path = Path(settings.VAR_DIR) / "demo"
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_demo_video(spec: DemoVideo, folder: Path) -> Path:
    """Write ``<slug>.mp4`` and its metadata sidecar unless they exist already."""
    from .ingest.synth import N_VARIANTS, make_synthetic_video, random_scenes

    path = folder / f"{spec.slug}.mp4"
    sidecar = path.with_name(path.name + ".json")
    if path.exists() and sidecar.exists():
        return path
    scenes = random_scenes(
        spec.n_scenes,
        fade_every=spec.fade_every,
        seed=spec.seed,
        monochrome_share=spec.monochrome_share,
    )
    scenes = _with_opening(scenes, spec.opening, N_VARIANTS, colour=spec.monochrome_share < 1)
    tmp = path.with_name(path.stem + ".part.mp4")
    truth = make_synthetic_video(tmp, scenes, seed=spec.seed)
    tmp.replace(path)
    sidecar.write_text(
        json.dumps(
            {
                "title": spec.title,
                "year": spec.year,
                "date": spec.date,
                "metadata": {
                    "description": spec.description,
                    "source": "VIVA demo (synthetic, made from scikit-image pictures)",
                    "ground_truth": {
                        "hard_cuts": truth.hard_cuts,
                        "gradual": truth.fades,
                        "shots": truth.shots,
                    },
                },
            },
            indent=2,
        )
    )
    return path


def _with_opening(scenes: list, variant: int, n_variants: int, *, colour: bool) -> list:
    """Start with ``variant`` (in colour unless the film is black and white); keep
    consecutive scenes on different pictures (a cut between two crops of one picture is not
    what the ground truth describes)."""
    from .ingest.synth import _BASE_IMAGES

    n_base = len(_BASE_IMAGES)
    scenes = list(scenes)
    scenes[0] = replace(scenes[0], variant=variant, monochrome=scenes[0].monochrome and not colour)
    if len(scenes) > 1:
        avoid = {variant % n_base}
        if len(scenes) > 2:
            avoid.add(scenes[2].variant % n_base)
        second = scenes[1].variant
        while second % n_base in avoid:
            second = (second + 1) % n_variants
        scenes[1] = replace(scenes[1], variant=second)
    return scenes


def make_demo_stills(folder: Path) -> list[Path]:
    """Save the bundled scikit-image pictures as JPEG files (once)."""
    import numpy as np
    import skimage.data
    from PIL import Image as PILImage

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in DEMO_STILL_NAMES:
        path = folder / f"{name}.jpg"
        if not path.exists():
            pixels = np.asarray(getattr(skimage.data, name)())
            if pixels.dtype != np.uint8:
                pixels = (255 * (pixels / max(float(pixels.max()), 1e-9))).astype(np.uint8)
            tmp = path.with_suffix(".part")
            PILImage.fromarray(pixels).convert("RGB").save(tmp, "JPEG", quality=90)
            tmp.replace(path)
        paths.append(path)
    return paths


# --- users ------------------------------------------------------------------------------------
def ensure_user(username: str, role: int, *, superuser: bool = False) -> str | None:
    """Create the user with a random password (returned once); None if it exists already."""
    User = get_user_model()
    if User.objects.filter(username=username).exists():
        return None
    password = secrets.token_urlsafe(12)
    with transaction.atomic():
        if superuser:
            user = User.objects.create_superuser(username=username, password=password, email="")
        else:
            user = User.objects.create_user(username=username, password=password)
        Profile.objects.update_or_create(user=user, defaults={"role": role})
    return password


# --- the whole demo ---------------------------------------------------------------------------
def build_demo(
    *,
    say: Say = print,
    with_admin: bool = True,
    with_role_users: bool = False,
    if_empty: bool = False,
    worker_job: bool = True,
) -> DemoReport:
    """Build the demo archive (idempotent) and the demo users. See the module docstring."""
    report = DemoReport()
    if with_admin:
        report.admin_password = ensure_user(DEMO_ADMIN, Role.ADMIN, superuser=True)
    if with_role_users:
        report.user_passwords = {}
        for name, role in DEMO_ROLE_USERS.items():
            password = ensure_user(name, role)
            if password:
                report.user_passwords[name] = password

    if if_empty and Video.objects.exists():
        say("The archive already has videos: the demo archive is not built.")
        report.skipped = True
        return report

    folder = demo_dir()
    say(f"Making {len(DEMO_VIDEOS)} synthetic demo videos in {folder} …")
    videos = [make_demo_video(spec, folder) for spec in DEMO_VIDEOS]
    stills = make_demo_stills(folder / "stills")

    archive, _ = Collection.objects.get_or_create(
        name=DEMO_ARCHIVE,
        defaults={
            "kind": Collection.Kind.ARCHIVE,
            "description": "Synthetic videos with known cuts, made offline for the demo.",
        },
    )
    still_collection, _ = Collection.objects.get_or_create(
        name=DEMO_STILLS,
        defaults={
            "kind": Collection.Kind.STILLS,
            "description": "Example pictures that ship with scikit-image.",
        },
    )

    missing_videos = [p for p in videos if not Video.objects.filter(sha256=sha256_file(p)).exists()]
    missing_stills = [
        p
        for p in stills
        if not Image.objects.filter(sha256=sha256_file(p), video__isnull=True).exists()
    ]
    built_something = False
    if missing_videos:
        say(f"Importing {len(missing_videos)} demo videos (shot detection, keyframes) …")
        job = run_job_inline(
            "import_videos",
            {"collection_id": archive.pk, "paths": [str(p) for p in missing_videos]},
            title="Demo archive: video import",
        )
        report.videos_imported = len(job.result.get("imported", []))
        report.errors += _report_job(job, say)
        built_something = True
    if missing_stills:
        say(f"Importing {len(missing_stills)} demo stills …")
        job = run_job_inline(
            "import_images",
            {"collection_id": still_collection.pk, "paths": [str(p) for p in missing_stills]},
            title="Demo archive: still images",
        )
        report.stills_imported = len(job.result.get("imported", []))
        report.errors += _report_job(job, say)
        built_something = True
    if not built_something:
        say("The demo archive is complete already: nothing to do.")
    elif worker_job:
        # Queued, not run here: the worker started by `runall` picks it up, so the jobs
        # page shows a live progress bar on the first visit and proves the worker runs.
        job = start_job("worker_check", {"steps": 30, "delay": 0.2}, title="Worker check (demo)")
        report.worker_job_id = job.pk
        # Similarity search out of the box: unsupervised hash codes, then the index. The
        # demo uses the backbone's ImageNet weights when they are on this machine, else a
        # randomly initialised backbone (no weights can be downloaded offline); the "Hash
        # codes" page says so, and fitting again with ImageNet weights replaces it.
        job = start_job(
            "index_images",
            {"fit_if_missing": True, "init": _hashing_init(), "sample_size": 2000},
            title="Similarity index (demo)",
        )
        report.index_job_id = job.pk
    return report


def _hashing_init() -> str:
    """``"pretrained"`` when the hashing backbone's ImageNet weights are on this machine
    (nothing is downloaded to find out), else ``"random"``."""
    from retrieval.hashing.options import default_network
    from training.weights import WeightsUnavailable, resolve_weights

    try:
        resolve_weights(default_network(), "pretrained", allow_download=False)
    except (WeightsUnavailable, ValueError):
        return "random"
    return "pretrained"


def _report_job(job: Job, say: Say) -> int:
    result = job.result or {}
    if job.status != Job.Status.SUCCEEDED:
        say(f"  job #{job.pk} {job.status}: {job.error}")
    elif result.get("summary"):
        say(f"  job #{job.pk}: {result['summary']}")
    errors = result.get("errors", [])
    for error in errors:
        say(f"  {error.get('file')}: {error.get('error')}")
    if job.status != Job.Status.SUCCEEDED and not errors:
        return 1
    return len(errors)
