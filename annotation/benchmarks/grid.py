"""``bench grid``: server time of the label grid with 1 M images and 5 M annotations.

PLACEHOLDER — loader under construction.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

NAME = "grid"
LAYOUT = 1  # bump when the synthetic data changes: cached databases are rebuilt

KEYFRAMES_PER_VIDEO = 500
SHOTS_PER_VIDEO = 100
KEYFRAMES_PER_SHOT = KEYFRAMES_PER_VIDEO // SHOTS_PER_VIDEO
ARCHIVE_COLLECTIONS = 3
STILLS_EVERY = 10  # one image in ten is a web still, the rest are archive keyframes
N_USERS = 5
BASE_EPOCH = 1_700_000_000
SPAN_S = 2 * 365 * 86400
SKEW = 0.7  # category sizes ~ 1 / rank**SKEW
BULK_TABLES = (
    "viva_shot",
    "viva_image",
    "annotation_annotation",
    "annotation_annotationevent",
    "annotation_candidate",
)


def log(msg: str) -> None:
    sys.stderr.write(f"[bench grid] {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------
# The bench database: never the user's; one per data size, kept between runs.
# --------------------------------------------------------------------------------------


def bench_settings(images: int, annotations: int, db_dir: str | None,
                   db_name: str | None = None) -> dict:
    """Connection settings of the bench database, derived from the configured one:
    ``var/bench/grid-<images>_<annotations>.sqlite3`` or ``<name>_bench_<images>_<annotations>``
    on the same PostgreSQL server (one database per size, so each is kept for reuse)."""
    base = connections[DEFAULT_DB_ALIAS].settings_dict
    tag = f"{images}_{annotations}"
    if base["ENGINE"].endswith("sqlite3"):
        folder = Path(db_dir) if db_dir else Path(settings.VAR_DIR) / "bench"
        folder.mkdir(parents=True, exist_ok=True)
        return {"NAME": str(folder / f"{db_name or 'grid-' + tag}.sqlite3")}
    if base["ENGINE"].endswith("postgresql"):
        if db_name and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", db_name):
            raise SystemExit("--db-name: lower-case letters, digits and _ only.")
        return {"NAME": db_name or f"{base['NAME']}_bench_{tag}"[:63]}
    raise SystemExit(f"bench grid supports SQLite and PostgreSQL, not {base['ENGINE']}.")


@contextmanager
def use_database(overrides: dict):
    """Point the default connection at another database for the duration of the block.

    The settings dict is shared with ``settings.DATABASES``, so it is updated in place and
    restored afterwards; the connection is closed on both sides of the switch.
    """
    conn = connections[DEFAULT_DB_ALIAS]
    if conn.in_atomic_block:
        raise RuntimeError("bench grid cannot run inside a transaction.")
    conn.close()
    saved = dict(conn.settings_dict)
    conn.settings_dict.update(overrides)
    try:
        yield conn
    finally:
        conn.close()
        conn.settings_dict.clear()
        conn.settings_dict.update(saved)


def _is_sqlite(conn) -> bool:
    return conn.vendor == "sqlite"


def drop_database(conn) -> None:
    name = conn.settings_dict["NAME"]
    conn.close()
    if _is_sqlite(conn):
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(name + suffix).unlink(missing_ok=True)
        return
    with conn.creation._nodb_cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def ensure_database(conn) -> None:
    """Create the PostgreSQL bench database if missing (SQLite creates its file itself)."""
    if _is_sqlite(conn):
        return
    name = conn.settings_dict["NAME"]
    with conn.creation._nodb_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{name}"')


def read_meta(conn) -> dict:
    """What the bench database was built with: ``{"params": …, "migrations": …}``."""
    with conn.cursor() as cursor:
        try:
            cursor.execute("SELECT k, v FROM bench_grid_meta")
            rows = cursor.fetchall()
        except Exception:  # noqa: BLE001 - no table yet: an empty or foreign database
            return {}
    return {k: json.loads(v) for k, v in rows}


def write_meta(conn, meta: dict) -> None:
    with conn.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS bench_grid_meta (k varchar(50) PRIMARY KEY, v text)"
        )
        cursor.execute("DELETE FROM bench_grid_meta")
        for key, value in meta.items():
            cursor.execute(
                "INSERT INTO bench_grid_meta (k, v) VALUES (%s, %s)", [key, json.dumps(value)]
            )


# Apps whose tables the bench fills or reads: a changed migration of theirs means a rebuild.
SCHEMA_APPS = {"viva", "annotation", "auth", "contenttypes", "sessions"}


def migration_files() -> dict[str, str]:
    """``{"app.migration": content hash}`` of the migrations on disk of SCHEMA_APPS."""
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    out = {}
    for (app, name), migration in sorted(loader.disk_migrations.items()):
        if app not in SCHEMA_APPS:
            continue
        source = Path(sys.modules[migration.__module__].__file__ or "")
        data = source.read_bytes() if source.is_file() else b""
        digest = hashlib.sha1(data, usedforsecurity=False)
        out[f"{app}.{name}"] = digest.hexdigest()[:16]
    return out


# --------------------------------------------------------------------------------------
# Synthetic data, generated inside the database (no rows travel through Python).
# --------------------------------------------------------------------------------------


def category_sizes(images: int, annotations: int, categories: int) -> list[int]:
    """Annotations per category, Zipf-like (~1/rank**SKEW), none above the image count."""
    if annotations > images * categories:
        raise SystemExit("More annotations than (image, category) pairs.")
    weights = [1 / (k + 1) ** SKEW for k in range(categories)]
    sizes = [0] * categories
    free = list(range(categories))
    left = annotations
    while left > 0:
        total_w = sum(weights[k] for k in free)
        share = {k: left * weights[k] / total_w for k in free}
        full = [k for k in free if share[k] >= images]
        if full:  # these take every image; the rest is shared among the others
            for k in full:
                sizes[k] = images
                free.remove(k)
            left = annotations - sum(sizes)
            continue
        for k in free:
            sizes[k] = math.floor(share[k])
        for k in free[: annotations - sum(sizes)]:
            sizes[k] += 1
        left = 0
    return sizes


def stride(n: int, k: int) -> tuple[int, int]:
    """A (multiplier, offset) pair making ``(g * m + o) % n`` a permutation of 0..n-1."""
    m = max(1, int(n * ((0.6180339887 * (k + 1)) % 1)))
    while math.gcd(m, n) != 1:
        m += 1
    return m, (k * 104_729) % n


class Dialect:
    """The few SQL spellings that differ between SQLite and PostgreSQL."""

    def __init__(self, conn):
        self.sqlite = _is_sqlite(conn)

    def insert_series(self, n: int, table: str, columns: str, select: str) -> str:
        """``INSERT INTO table (columns) SELECT select FROM <g in 0..n-1>``."""
        if self.sqlite:
            return (
                "WITH RECURSIVE s(g) AS"
                f" (SELECT 0 UNION ALL SELECT g + 1 FROM s WHERE g < {n - 1}) "
                f"INSERT INTO {table} ({columns}) SELECT {select} FROM s"
            )
        return (
            f"INSERT INTO {table} ({columns}) SELECT {select} "
            f"FROM generate_series(0::bigint, {n - 1}) AS s(g)"
        )

    def ts(self, seconds: str) -> str:
        if self.sqlite:
            return f"datetime({BASE_EPOCH} + ({seconds}), 'unixepoch')"
        return f"to_timestamp({BASE_EPOCH} + ({seconds}))"

    def hex64(self, expr: str, prefix: str) -> str:
        if self.sqlite:
            return f"printf('{prefix}%0{64 - len(prefix)}x', {expr})"
        return f"'{prefix}' || lpad(to_hex({expr}), {64 - len(prefix)}, '0')"


def drop_indexes(conn, table: str) -> list[str]:
    """Drop the secondary indexes (and, on PostgreSQL, FK/unique constraints) of ``table``;
    return the statements that recreate them."""
    recreate: list[str] = []
    with conn.cursor() as cursor:
        if _is_sqlite(conn):
            cursor.execute(
                "SELECT name, sql FROM sqlite_master "
                "WHERE type = 'index' AND tbl_name = %s AND sql IS NOT NULL",
                [table],
            )
            for name, sql in cursor.fetchall():
                cursor.execute(f'DROP INDEX "{name}"')
                recreate.append(sql)
            return recreate
        cursor.execute(
            "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype IN ('f', 'u') ORDER BY contype DESC",
            [table],
        )
        constraints = cursor.fetchall()
        for name, _, _ in constraints:
            cursor.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"')
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = %s AND indexname NOT IN (SELECT conname FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype = 'p')",
            [table, table],
        )
        for name, sql in cursor.fetchall():
            cursor.execute(f'DROP INDEX "{name}"')
            recreate.append(sql)
        recreate += [
            f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" {definition}'
            for name, kind, definition in constraints
        ]
    return recreate


def build(conn, params: dict, quiet: bool = False) -> dict[str, float]:
    """Fill an empty, migrated bench database; return seconds per step."""
    from django.contrib.auth import get_user_model
    from django.core.management.color import no_style

    from viva.models import Collection, Image, Profile, Shot, Video
    from viva.models.users import Role

    from ..models import Category

    say = (lambda msg: None) if quiet else log
    timings: dict[str, float] = {}
    n_images, n_annotations = params["images"], params["annotations"]
    n_categories, n_candidates = params["categories"], params["candidates"]
    d = Dialect(conn)
    sqlite = d.sqlite

    def step(name: str, sql: str) -> None:
        t0 = time.perf_counter()
        with conn.cursor() as cursor:
            cursor.execute(sql)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0

    with conn.cursor() as cursor:
        if sqlite:
            cursor.execute("PRAGMA journal_mode = OFF")
            cursor.execute("PRAGMA synchronous = OFF")
            cursor.execute("PRAGMA cache_size = -1000000")
            cursor.execute("PRAGMA temp_store = MEMORY")
            cursor.execute("PRAGMA threads = 4")
            cursor.execute("PRAGMA foreign_keys = OFF")
        else:
            cursor.execute("SET synchronous_commit = off")
            cursor.execute("SET maintenance_work_mem = '1GB'")

    t0 = time.perf_counter()
    recreate = {table: drop_indexes(conn, table) for table in BULK_TABLES}
    timings["drop_indexes"] = time.perf_counter() - t0

    # Users (annotators, 10 × 10 grid), collections, categories: a handful of ORM rows.
    User = get_user_model()
    users = []
    for i in range(N_USERS):
        user = User(username=f"bench-annotator-{i}")
        user.set_unusable_password()
        user.save()
        Profile.objects.update_or_create(
            user=user, defaults={"role": Role.ANNOTATOR, "grid_rows": 10, "grid_cols": 10}
        )
        users.append(user.pk)
    first_user = users[0]
    if users != list(range(first_user, first_user + N_USERS)):
        raise RuntimeError("bench users must have consecutive ids")
    collections = [
        Collection.objects.create(name=f"Bench archive {i + 1}", kind=Collection.Kind.ARCHIVE).pk
        for i in range(ARCHIVE_COLLECTIONS)
    ]
    web = Collection.objects.create(name="Bench web images", kind=Collection.Kind.WEB).pk
    if collections != list(range(collections[0], collections[0] + ARCHIVE_COLLECTIONS)):
        raise RuntimeError("bench collections must have consecutive ids")
    categories = [
        Category.objects.create(
            name=f"Bench concept {k + 1:02d}",
            kind=Category.Kind.PERSON if k % 10 == 9 else Category.Kind.CONCEPT,
        ).pk
        for k in range(n_categories)
    ]

    n_stills = n_images // STILLS_EVERY
    n_keyframes = n_images - n_stills
    n_videos = math.ceil(n_keyframes / KEYFRAMES_PER_VIDEO)
    n_shots = math.ceil(n_keyframes / KEYFRAMES_PER_SHOT)
    say(f"loading {n_videos:,} videos, {n_shots:,} shots, {n_images:,} images …")
    c0 = collections[0]
    if n_videos:
        step("videos", d.insert_series(
            n_videos, "viva_video",
            "id, title, file, original_name, sha256, size_bytes, year, fps, n_frames, duration_ms,"
            " width, height, metadata, created_at, collection_id",
            f"g + 1, 'Bench video ' || (g + 1), 'bench/video/' || (g + 1) || '.mp4', '',"
            f" {d.hex64('g + 1', 'b')}, 1000000000, 1950 + g % 70, 25.0, 12500, 500000,"
            f" 1280, 720, '{{}}', {d.ts('g * 37')}, {c0} + g % {ARCHIVE_COLLECTIONS}",
        ))
        step("shots", d.insert_series(
            n_shots, "viva_shot",
            "id, video_id, number, start_frame, end_frame, start_ms, end_ms",
            f"g + 1, g / {SHOTS_PER_VIDEO} + 1, g % {SHOTS_PER_VIDEO} + 1,"
            f" (g % {SHOTS_PER_VIDEO}) * 125, (g % {SHOTS_PER_VIDEO}) * 125 + 124,"
            f" (g % {SHOTS_PER_VIDEO}) * 5000, (g % {SHOTS_PER_VIDEO}) * 5000 + 4960",
        ))
        step("images", d.insert_series(
            n_keyframes, "viva_image",
            "id, collection_id, file, thumbnail, sha256, width, height, video_id, shot_id,"
            " frame, time_ms, original_name, created_at",
            f"g + 1, {c0} + (g / {KEYFRAMES_PER_VIDEO}) % {ARCHIVE_COLLECTIONS},"
            f" 'bench/kf/' || (g / {KEYFRAMES_PER_VIDEO} + 1) || '/' || (g + 1) || '.jpg',"
            f" 'bench/thumbs/' || (g + 1) || '.jpg', {d.hex64('g + 1', '')}, 1280, 720,"
            f" g / {KEYFRAMES_PER_VIDEO} + 1, g / {KEYFRAMES_PER_SHOT} + 1,"
            f" (g % {KEYFRAMES_PER_VIDEO}) * 25 + 12, (g % {KEYFRAMES_PER_VIDEO}) * 1000 + 480,"
            f" '', {d.ts(f'(g / {KEYFRAMES_PER_VIDEO}) * 37')}",
        ))
    if n_stills:
        step("images", d.insert_series(
            n_stills, "viva_image",
            "id, collection_id, file, thumbnail, sha256, width, height, original_name, created_at",
            f"{n_keyframes} + g + 1, {web}, 'bench/web/' || (g + 1) || '.jpg',"
            f" 'bench/thumbs/w' || (g + 1) || '.jpg', {d.hex64(f'{n_keyframes} + g + 1', '')},"
            f" 800, 600, 'web-' || (g + 1) || '.jpg', {d.ts('g * 61')}",
        ))

    sizes = category_sizes(n_images, n_annotations, n_categories)
    say(f"loading {n_annotations:,} annotations over {n_categories} categories "
        f"(largest {max(sizes, default=0):,}) …")
    for k, (category_id, size) in enumerate(zip(categories, sizes, strict=True)):
        if not size:
            continue
        m, o = stride(n_images, k)
        # value: 25 % positive, 60 % negative, 15 % neutral; time: spread over two years.
        h = f"((g * 2654435761 + {k * 40503}) % 100)"
        step("annotations", d.insert_series(
            size, "annotation_annotation",
            "image_id, category_id, value, source, user_id, updated_at",
            f"(g * {m} + {o}) % {n_images} + 1, {category_id},"
            f" CASE WHEN {h} < 25 THEN 1 WHEN {h} < 85 THEN -1 ELSE 0 END,"
            f" CASE WHEN {h} % 7 = 0 THEN 'similarity' ELSE 'grid' END,"
            f" {first_user} + (g * 7 + {k}) % {N_USERS},"
            f" {d.ts(f'(g * 48271 + {k * 7919}) % {SPAN_S}')}",
        ))
    if params["events"]:
        say("loading one creation event per annotation …")
        step("events", (
            "INSERT INTO annotation_annotationevent (image_id, category_id, category_name,"
            " old_value, new_value, source, user_id, created_at)"
            " SELECT a.image_id, a.category_id, c.name, NULL, a.value, a.source, a.user_id,"
            " a.updated_at FROM annotation_annotation a"
            " JOIN annotation_category c ON c.id = a.category_id"
        ))
    if n_candidates and categories:
        # Candidates of the largest category (the one the bench labels): proposals from a
        # similarity search, about half of them already annotated.
        n = min(n_candidates, n_images)
        m, o = stride(n_images, n_categories + 1)
        step("candidates", d.insert_series(
            n, "annotation_candidate",
            "category_id, image_id, source, score, added_at",
            f"{categories[0]}, (g * {m} + {o}) % {n_images} + 1, 'similarity',"
            f" (g % 1000) / 1000.0, {d.ts(f'(g * 69621) % {SPAN_S}')}",
        ))

    say("building indexes …")
    t0 = time.perf_counter()
    with conn.cursor() as cursor:
        for table in BULK_TABLES:
            for sql in recreate[table]:
                cursor.execute(sql)
        if not sqlite:
            for sql in connections[DEFAULT_DB_ALIAS].ops.sequence_reset_sql(
                no_style(), [Video, Shot, Image]
            ):
                cursor.execute(sql)
    timings["indexes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with conn.cursor() as cursor:
        if sqlite:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            if params["analyze"]:
                cursor.execute("ANALYZE")
        else:
            for table in BULK_TABLES + ("viva_video", "annotation_category"):
                cursor.execute(f'VACUUM ANALYZE "{table}"')
    timings["analyze"] = time.perf_counter() - t0
    return timings


def prepare(params: dict, rebuild: bool, quiet: bool) -> dict:
    """Open (building if needed) the bench database on the default connection.

    A cached database is reused when it was built with the same parameters and every
    migration of SCHEMA_APPS it applied is still on disk unchanged; newer migrations are
    applied to it (as they would be to a production database). Otherwise, or when
    migrating fails, it is rebuilt.
    """
    from django.core.management import call_command

    say = (lambda msg: None) if quiet else log
    conn = connections[DEFAULT_DB_ALIAS]
    if rebuild:
        drop_database(conn)
    ensure_database(conn)
    meta = read_meta(conn)
    migrations = migration_files()
    applied = meta.get("migrations") or {}
    if (
        meta.get("params") == params
        and applied
        and all(migrations.get(name) == digest for name, digest in applied.items())
    ):
        t0 = time.perf_counter()
        try:
            call_command("migrate", verbosity=0, interactive=False)
        except Exception as exc:  # noqa: BLE001 - e.g. another app's migrations were squashed
            say(f"migrating the cached database failed ({exc}); rebuilding")
        else:
            if applied != migrations:
                write_meta(conn, {"params": params, "migrations": migrations})
            return {"cached": True, "migrate_s": round(time.perf_counter() - t0, 1)}
    say(f"building {conn.settings_dict['NAME']} …")
    drop_database(conn)
    ensure_database(conn)
    t0 = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    migrate_s = time.perf_counter() - t0
    timings = build(conn, params, quiet)
    timings["migrate"] = migrate_s
    conn.close()
    write_meta(conn, {"params": params, "migrations": migrations})
    built = {"cached": False, "build_s": round(sum(timings.values()), 1),
             "build_steps_s": {k: round(v, 1) for k, v in timings.items()}}
    say(f"built in {built['build_s']} s: {built['build_steps_s']}")
    return built


# --------------------------------------------------------------------------------------
# The baseline: the same pages built the straightforward way (OFFSET, exact counts on
# every view, one query per image). Served through a bench URLconf that wraps the real one.
# --------------------------------------------------------------------------------------


def _naive_views():
    from django.views.generic import TemplateView

    from viva.models import Collection, Image

    from .. import grid as g
    from ..models import Annotation, Source
    from ..views import grid as grid_views
    from ..views import review as review_views

    def naive_page(request, qs, per_page):
        number, _ = g.parse_page_args(request)
        total = qs.count()  # exact, on every view
        pages = max(1, math.ceil(total / per_page))
        number = min(number, pages)
        start = (number - 1) * per_page
        return list(qs[start : start + per_page]), number, total

    class NaiveLabelView(grid_views.LabelView):
        """The label page's archive tab: OFFSET paging, one label query per image."""

        def get_context_data(self, **kwargs):
            ctx = TemplateView.get_context_data(self, **kwargs)
            ctx["selected_category"] = category = self.category
            rows, cols = g.grid_size(self.request.user)
            images = Image.objects.select_related("video", "shot").order_by("id")
            page, number, total = naive_page(self.request, images, rows * cols)
            links = g._Links()
            items = []
            for image in page:  # N+1: the label of each image is its own query
                value = (
                    Annotation.objects.filter(category=category, image=image, face__isnull=True)
                    .values_list("value", flat=True)
                    .first()
                )
                items.append(g.image_item(image, value, links=links))
            grid_page = g.GridPage(items, number, rows * cols, total, next_cursor="")
            ctx.update(
                tab="archive", tabs=grid_views.TABS,
                collections=list(Collection.objects.order_by("name").values("id", "name")),
                videos=[], collection_id=None, video_id=None, unlabelled=False,
                grid=grid_views.build_grid(self.request, grid_page, category,
                                           source=Source.GRID, rows=rows, cols=cols),
                acquisition_links=grid_views.acquisition_links(),
            )
            return ctx

    class NaiveReviewView(review_views.ReviewView):
        """The review page: exact counts, OFFSET paging, one query per image."""

        def get_context_data(self, **kwargs):
            ctx = TemplateView.get_context_data(self, **kwargs)
            ctx["selected_category"] = category = self.category
            name = self.request.GET.get("value", "positive")
            value = review_views.VALUES.get(name, 1)
            counts = {
                v: Annotation.objects.filter(category=category, value=v, face__isnull=True)
                .count()
                for v in review_views.VALUES.values()
            }
            rows, cols = g.grid_size(self.request.user)
            anns = (
                Annotation.objects.filter(category=category, value=value, face__isnull=True)
                .select_related("user")
                .order_by("-updated_at", "-id")
            )
            page, number, total = naive_page(self.request, anns, rows * cols)
            links = g._Links()
            items = []
            for ann in page:  # N+1: each image (with video and shot) is its own query
                image = Image.objects.select_related("video", "shot").get(pk=ann.image_id)
                who = ann.user.username if ann.user_id else "—"
                items.append(g.image_item(image, ann.value, links=links,
                                          extra=f"{who} · {ann.get_source_display().lower()}"))
            grid_page = g.GridPage(items, number, rows * cols, total, next_cursor="")
            ctx.update(
                value=name, counts_approximate=False,
                tabs=[(n, counts[v]) for n, v in review_views.VALUES.items()],
                grid=grid_views.build_grid(self.request, grid_page, category,
                                           source=Source.REVIEW, rows=rows, cols=cols),
            )
            return ctx

    return NaiveLabelView, NaiveReviewView


_WRAPPED_URLCONF = settings.ROOT_URLCONF  # the real one, read before any override


def __getattr__(name: str):
    # ``urlpatterns`` is built on first use, so importing this module needs no URLconf.
    if name == "urlpatterns":
        from django.urls import include, path

        label, review = _naive_views()
        patterns = [
            path("bench-naive/label/", label.as_view(), name="bench_naive_label"),
            path("bench-naive/review/", review.as_view(), name="bench_naive_review"),
            path("", include(_WRAPPED_URLCONF)),
        ]
        globals()["urlpatterns"] = patterns
        return patterns
    raise AttributeError(name)


# --------------------------------------------------------------------------------------
# Measuring: real requests through Django's handler (middleware, session, templates).
# --------------------------------------------------------------------------------------

_GRID_JSON = re.compile(r'<script id="vgrid-data" type="application/json">(.*?)</script>', re.S)


def grid_data(response) -> dict:
    """The grid contract dict the page embedded (json_script) — for checks, not timing."""
    match = _GRID_JSON.search(response.content.decode())
    if not match:
        raise RuntimeError(f"no grid on the page (HTTP {response.status_code})")
    return json.loads(match.group(1))


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of ``values`` (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(times_s: list[float], queries: int | None = None) -> dict[str, float]:
    ms = [t * 1000 for t in times_s]
    out = {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
    }
    if queries is not None:
        out["queries"] = queries
    return out


class Client:
    """A logged-in annotator (10 × 10 grid) with the largest category selected."""

    def __init__(self, options: dict):
        from django.contrib.auth import get_user_model
        from django.http.request import validate_host
        from django.test import Client as TestClient

        from ..models import Category

        self.conn = connections[DEFAULT_DB_ALIAS]
        # CONN_MAX_AGE = 0 (the SQLite default) opens a connection per request: so do we.
        self.reconnect = not self.conn.settings_dict.get("CONN_MAX_AGE")
        host = next(
            (h for h in ("localhost", "127.0.0.1", "testserver")
             if validate_host(h, settings.ALLOWED_HOSTS)),
            None,
        )
        if host is None:
            raise RuntimeError("Add localhost to VIVA_ALLOWED_HOSTS to run bench grid.")
        self.user = get_user_model().objects.get(username="bench-annotator-0")
        self.category = Category.objects.get(name="Bench concept 01")
        self.client = TestClient(enforce_csrf_checks=True, HTTP_HOST=host)
        self.client.force_login(self.user)
        session = self.client.session
        session["annotation_selected"] = {
            "current": self.category.pk, self.category.kind: self.category.pk
        }
        session.save()
        self.csrf = ""

    def get(self, url: str) -> tuple[float, Any]:
        if self.reconnect:
            self.conn.close()
        t0 = time.perf_counter()
        response = self.client.get(url)
        elapsed = time.perf_counter() - t0
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: HTTP {response.status_code}")
        if "csrftoken" in response.cookies:
            self.csrf = response.cookies["csrftoken"].value
        return elapsed, response

    def post_json(self, url: str, payload: dict) -> tuple[float, Any]:
        body = json.dumps(payload)
        if self.reconnect:
            self.conn.close()
        t0 = time.perf_counter()
        response = self.client.post(
            url, body, content_type="application/json", HTTP_X_CSRFTOKEN=self.csrf
        )
        elapsed = time.perf_counter() - t0
        if response.status_code != 200:
            raise RuntimeError(
                f"POST {url}: HTTP {response.status_code} {response.content[:300]!r}"
            )
        return elapsed, response

    def queries(self, method: str, url: str, **kwargs) -> int:
        """Queries of one request (a fresh connection, as every SQLite request has)."""
        from django.test.utils import CaptureQueriesContext

        self.conn.close()
        with CaptureQueriesContext(self.conn) as ctx:
            response = getattr(self.client, method)(url, **kwargs)
        if response.status_code != 200:
            raise RuntimeError(f"{method.upper()} {url}: HTTP {response.status_code}")
        return len(ctx)

    def set_grid(self, rows: int, cols: int) -> None:
        from viva.models import Profile

        Profile.objects.filter(user=self.user).update(grid_rows=rows, grid_cols=cols)


def time_pages(client: Client, next_url, *, samples: int, warmup: int, per_page: int,
               cold: bool = False, budget_s: float | None = None) -> dict:
    """GET ``next_url(previous_grid_data)`` ``warmup + samples`` times; summarise the last.

    ``cold``: clear the cache before each request, so every page pays its counts as if
    the cached count had expired. ``budget_s``: stop early (``truncated``) when a very
    slow variant would take longer than this.
    """
    from django.core.cache import cache

    times: list[float] = []
    data = None
    started = time.perf_counter()
    for i in range(warmup + samples):
        url = next_url(data)
        if cold:
            cache.clear()
        elapsed, response = client.get(url)
        data = grid_data(response)
        shown = len(data["items"])
        if shown != per_page and data["page"]["number"] < data["page"]["num_pages"]:
            raise RuntimeError(f"{url}: {shown} items on a page of {per_page}")
        if i >= warmup:
            times.append(elapsed)
        if budget_s and time.perf_counter() - started > budget_s and len(times) >= 5:
            out = summary(times)
            out["truncated"] = True
            return out
    return summary(times)


def fixed(url: str):
    return lambda data: url


def random_pages(client: Client, url: str, rng: random.Random):
    """Uniformly random page numbers of the list at ``url`` (OFFSET paging)."""
    _, response = client.get(url)
    pages = grid_data(response)["page"]["num_pages"]
    sep = "&" if "?" in url else "?"
    return lambda data: f"{url}{sep}page={rng.randint(1, pages)}"


def walk(url: str):
    """Follow the page's own "next" link (keyset cursor) — "save and next" without saving."""
    return lambda data: (data and data["page"]["next_url"]) or url


def time_saves(client: Client, url: str, category_id: int, n_images: int, rng: random.Random,
               *, samples: int, warmup: int, batch: int = 100) -> tuple[dict, dict]:
    """POST batches of ``batch`` labels for random images: ~30 % unchanged, the rest a
    different value (one in ten of those a removal)."""
    from ..models import Annotation

    times: list[float] = []
    totals = {"created": 0, "updated": 0, "removed": 0, "unchanged": 0}
    for i in range(warmup + samples):
        ids = rng.sample(range(1, n_images + 1), min(batch, n_images))
        current = dict(
            Annotation.objects.filter(
                category_id=category_id, face__isnull=True, image_id__in=ids
            ).values_list("image_id", "value")
        )
        labels = []
        for image_id in ids:
            old = current.get(image_id)
            if rng.random() < 0.3:
                new = old
            elif old is not None and rng.random() < 0.1:
                new = None
            else:
                new = rng.choice([v for v in (1, -1, 0) if v != old])
            labels.append({"key": str(image_id), "value": new})
        payload = {"category": category_id, "source": "grid", "labels": labels}
        elapsed, response = client.post_json(url, payload)
        result = response.json()
        if i >= warmup:
            times.append(elapsed)
            for key in totals:
                totals[key] += result[key]
    return summary(times), totals


def save_payload(category_id: int, n_images: int, rng: random.Random, batch: int = 100) -> dict:
    ids = rng.sample(range(1, n_images + 1), min(batch, n_images))
    return {"category": category_id, "source": "grid",
            "labels": [{"key": str(i), "value": rng.choice([1, -1, 0, None])} for i in ids]}


def _worst(stats: list[dict]) -> float | None:
    return max((v["p95_ms"] for v in stats), default=None)


def measure(options: dict, params: dict) -> dict[str, Any]:
    """Time every page variant, the save, the baseline; count queries."""
    from django.core.cache import cache
    from django.test.utils import override_settings
    from django.urls import reverse

    rng = random.Random(options["seed"])
    samples, warmup = max(1, options["samples"]), max(0, options["warmup"])
    budget = options["max_variant_s"] or None
    only = [o for o in (options["only"] or "").split(",") if o]

    def wanted(name: str) -> bool:
        return not only or any(name.startswith(o) for o in only)

    say = (lambda msg: None) if options["quiet"] else log
    rows, cols = 10, 10
    per_page = rows * cols
    client = Client(options)
    client.set_grid(rows, cols)
    label, review = reverse("annotation:label"), reverse("annotation:review")
    save = reverse("annotation:save_labels")
    n_images = params["images"]

    def rnd(url):
        return lambda: random_pages(client, url, rng)

    def fix(url):
        return lambda: fixed(url)

    def wlk(url):
        return lambda: walk(url)

    # name → (URL strategy, cold cache?)
    pages = {
        "label_unlabelled": (fix(f"{label}?tab=unlabelled"), False),
        "label_unlabelled_next": (wlk(f"{label}?tab=unlabelled"), False),
        "label_all_deep": (rnd(f"{label}?tab=all"), False),
        "label_archive": (fix(f"{label}?tab=archive"), False),
        "label_archive_deep": (rnd(f"{label}?tab=archive"), False),
        "label_archive_next": (wlk(f"{label}?tab=archive"), False),
        "label_archive_unlabelled_deep": (rnd(f"{label}?tab=archive&unlabelled=1"), False),
        "review_positive": (fix(f"{review}?value=positive"), False),
        "review_positive_deep": (rnd(f"{review}?value=positive"), False),
        "review_negative_next": (wlk(f"{review}?value=negative"), False),
        "label_unlabelled_cold": (fix(f"{label}?tab=unlabelled"), True),
        "label_archive_cold": (fix(f"{label}?tab=archive"), True),
        "label_archive_unlabelled_cold": (fix(f"{label}?tab=archive&unlabelled=1"), True),
        "review_positive_cold": (fix(f"{review}?value=positive"), True),
    }
    first_urls = {
        "label_unlabelled": f"{label}?tab=unlabelled",
        "label_all": f"{label}?tab=all",
        "label_archive": f"{label}?tab=archive",
        "label_archive_unlabelled": f"{label}?tab=archive&unlabelled=1",
        "review_positive": f"{review}?value=positive",
    }
    variants: dict[str, dict] = {}
    cold_samples = max(1, min(samples, options["cold_samples"]))
    for name, (strategy, cold) in pages.items():
        if not wanted(name):
            continue
        variants[name] = time_pages(
            client, strategy(), per_page=per_page, cold=cold, budget_s=budget,
            samples=cold_samples if cold else samples,
            warmup=min(warmup, 1) if cold else warmup,
        )
        say(f"{name}: {variants[name]}")

    # Queries per page: constant whatever the page size (≤ 15), counted with a cold cache.
    queries: dict[str, dict[str, int]] = {}
    for size in ((rows, cols), (2, 3)):
        client.set_grid(*size)
        for name, url in first_urls.items():
            if wanted(name):
                cache.clear()
                queries.setdefault(name, {})[str(size[0] * size[1])] = client.queries("get", url)
    client.set_grid(rows, cols)

    # Saving 100 labels.
    save_stats, save_totals, save_queries = None, {}, None
    if wanted("save"):
        save_stats, save_totals = time_saves(client, save, client.category.pk, n_images, rng,
                                             samples=samples, warmup=warmup)
        say(f"save: {save_stats} {save_totals}")
        save_queries = client.queries(
            "post", save, data=json.dumps(save_payload(client.category.pk, n_images, rng)),
            content_type="application/json", HTTP_X_CSRFTOKEN=client.csrf,
        )

    # The baseline, same client and pages, through the bench URLconf.
    baseline: dict[str, dict] = {}
    baseline_queries = None
    if not options["no_baseline"] and wanted("baseline"):
        with override_settings(ROOT_URLCONF=__name__):
            naive_label = reverse("bench_naive_label")
            naive_review = reverse("bench_naive_review")
            b_samples = max(1, min(samples, options["baseline_samples"]))
            for name, strategy in {
                "label_archive": fix(naive_label),
                "label_archive_deep": rnd(naive_label),
                "review_positive": fix(f"{naive_review}?value=positive"),
                "review_positive_deep": rnd(f"{naive_review}?value=positive"),
            }.items():
                baseline[name] = time_pages(client, strategy(), samples=b_samples,
                                            warmup=min(warmup, 3), per_page=per_page,
                                            budget_s=budget)
                say(f"baseline {name}: {baseline[name]}")
            cache.clear()
            baseline_queries = client.queries("get", naive_label)

    warm = {k: v for k, v in variants.items() if not k.endswith("_cold")}
    result: dict[str, Any] = {
        "page_p95_ms": _worst(list(warm.values())),
        "label_page_p95_ms": _worst([v for k, v in warm.items() if k.startswith("label")]),
        "review_p95_ms": _worst([v for k, v in warm.items() if k.startswith("review")]),
        "page_cold_p95_ms": _worst([v for k, v in variants.items() if k.endswith("_cold")]),
        "save_p95_ms": save_stats["p95_ms"] if save_stats else None,
        "save_p50_ms": save_stats["p50_ms"] if save_stats else None,
        "page_queries": max((max(q.values()) for q in queries.values()), default=None),
        "page_queries_by_size": queries,
        "save_queries": save_queries,
        "per_page": per_page,
    }
    if baseline:
        result.update(
            baseline_page_p95_ms=baseline["label_archive_deep"]["p95_ms"],
            baseline_review_p95_ms=baseline["review_positive_deep"]["p95_ms"],
            baseline_page_queries=baseline_queries,
        )
        if "label_archive_deep" in variants:
            # Same page (label page, archive tab, random page numbers), ours vs naive.
            result["ratio"] = round(baseline["label_archive_deep"]["p95_ms"]
                                    / variants["label_archive_deep"]["p95_ms"], 2)
    result.update(variants=variants, baseline_variants=baseline)
    if save_stats:
        result["save"] = dict(save_stats, **save_totals, batch=100)
    return result


# --------------------------------------------------------------------------------------
# Prototypes: proposed changes to code the bench does not own, patched in for one run
# (``--prototype NAME``) so their effect is measured on the same data, side by side.
# --------------------------------------------------------------------------------------


@contextmanager
def _patched(module, name: str, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


@contextmanager
def proto_unlabelled_scalar():
    """"Unlabelled" as ``(SELECT id … LIMIT 1) IS NULL`` instead of ``NOT EXISTS``.

    PostgreSQL turns NOT EXISTS into an anti-join; for the archive tab's id-ordered
    ``id > anchor … LIMIT`` it picks a merge anti-join that reads the annotation index
    from its start (0.3–8 s). A scalar subquery stays a per-row probe of the unique
    (category, image) index. SQLite runs both the same way. Only the archive tab
    (``images_page``, outer ref ``pk``) is patched: for the candidates tab the
    anti-join is the faster plan.
    """
    from django.db.models import OuterRef, Subquery
    from django.db.models.lookups import IsNull

    from .. import grid as grid_module
    from ..models import Annotation

    original = grid_module._unlabelled

    def labelled(category_id: int, image_ref: str):
        if image_ref != "pk":
            return original(category_id, image_ref)
        return IsNull(
            Subquery(
                Annotation.objects.filter(
                    category_id=category_id, face__isnull=True, image_id=OuterRef(image_ref)
                ).values("pk")[:1]
            ),
            False,
        )

    with _patched(grid_module, "_unlabelled", labelled):
        yield


PROTOTYPES = {
    "unlabelled-scalar": proto_unlabelled_scalar,
}


# --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--annotations", type=int, default=5_000_000)
    parser.add_argument("--categories", type=int, default=50)
    parser.add_argument("--candidates", type=int, default=100_000,
                        help="candidates of the measured (largest) category")
    parser.add_argument("--no-events", dest="events", action="store_false",
                        help="skip the history (one creation event per annotation)")
    parser.add_argument("--analyze", action="store_true",
                        help="run ANALYZE on SQLite after loading (PostgreSQL always does)")
    parser.add_argument("--samples", type=int, default=100, help="timed requests per variant")
    parser.add_argument("--baseline-samples", type=int, default=50)
    parser.add_argument("--cold-samples", type=int, default=20,
                        help="timed requests per cold-cache variant (each pays its counts)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached database")
    parser.add_argument("--no-keep", dest="keep", action="store_false",
                        help="delete the bench database afterwards")
    parser.add_argument("--db-dir", default=None, help="folder of the SQLite bench databases")
    parser.add_argument("--db-name", default=None,
                        help="name of the bench database (SQLite: file name without .sqlite3)")
    parser.add_argument("--persistent", action="store_true",
                        help="keep the connection between requests (CONN_MAX_AGE > 0); "
                        "default: as configured (SQLite: a connection per request)")
    parser.add_argument("--only", default="",
                        help="comma-separated name prefixes of what to measure (e.g. "
                        "'review,save'); default: everything")
    parser.add_argument("--max-variant-s", type=float, default=120,
                        help="stop timing a variant after this many seconds (0: never)")
    parser.add_argument("--pg-options", default="",
                        help="libpq options for the bench connection, e.g. '-c jit=off'")
    parser.add_argument("--prototype", action="append", default=[], choices=sorted(PROTOTYPES),
                        help="measure with a proposed change patched in (see docs)")
    parser.add_argument("--no-vacuum", dest="vacuum", action="store_false",
                        help="PostgreSQL: skip VACUUM (ANALYZE) of the annotation tables "
                        "before measuring")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


BENCH_CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "viva-bench-grid",
    }
}


def run(**options: Any) -> dict[str, Any]:
    """Build or reuse the bench database, measure, return the result (DESIGN.md 7)."""
    from django.contrib.contenttypes.models import ContentType
    from django.core.cache import cache
    from django.test.utils import override_settings

    params = {
        "layout": LAYOUT,
        "images": options["images"],
        "annotations": options["annotations"],
        "categories": options["categories"],
        "candidates": min(options["candidates"], options["images"]),
        "events": options["events"],
        "analyze": options["analyze"],
    }
    if params["images"] < 1 or params["categories"] < 1:
        raise SystemExit("bench grid needs at least one image and one category.")
    overrides = bench_settings(params["images"], params["annotations"], options["db_dir"],
                               options["db_name"])
    if options["persistent"]:
        overrides["CONN_MAX_AGE"] = 600
    if options["pg_options"]:
        base = connections[DEFAULT_DB_ALIAS].settings_dict
        if not base["ENGINE"].endswith("postgresql"):
            raise SystemExit("--pg-options needs PostgreSQL (DATABASE_URL).")
        extra = dict(base.get("OPTIONS") or {})
        extra["options"] = f"{extra.get('options', '')} {options['pg_options']}".strip()
        overrides["OPTIONS"] = extra
    started = time.perf_counter()
    load_before = _loadavg()
    # A private cache: the grid caches counts by category id, and those of the bench
    # database must neither leak into nor come from the application's cache.
    with use_database(overrides) as conn, override_settings(CACHES=BENCH_CACHES):
        try:
            built = prepare(params, options["rebuild"], options["quiet"])
            if options["vacuum"] and not _is_sqlite(conn):
                # The steady state of a maintained database: the saves of earlier runs
                # leave pages out of the visibility map, and index-only scans (counts,
                # deep pages) then read the heap. See docs/grid-performance.md.
                t0 = time.perf_counter()
                with conn.cursor() as cursor:
                    for table in ("annotation_annotation", "annotation_annotationevent"):
                        cursor.execute(f'VACUUM (ANALYZE) "{table}"')
                built["vacuum_s"] = round(time.perf_counter() - t0, 1)
            if not options["quiet"]:
                log("measuring …")
            with ExitStack() as stack:
                for name in options["prototype"]:
                    stack.enter_context(PROTOTYPES[name]())
                measured = measure(options, params)
        finally:
            cache.clear()
            ContentType.objects.clear_cache()  # ids of the bench database
            if not options["keep"]:
                drop_database(conn)
        vendor = conn.vendor
        connection_per_request = not conn.settings_dict.get("CONN_MAX_AGE")
    return {
        "name": NAME,
        "images": params["images"],
        "annotations": params["annotations"],
        "db": vendor,
        "page_p95_ms": measured.pop("page_p95_ms"),
        "save_p95_ms": measured.pop("save_p95_ms"),
        "page_queries": measured.pop("page_queries"),
        # ours / baseline / ratio: the same page (label page, archive tab, random page
        # numbers), p95 in ms; ratio = baseline / ours (> 1: ours is faster).
        "ours": measured["variants"].get("label_archive_deep", {}).get("p95_ms"),
        "baseline": measured.get("baseline_page_p95_ms"),
        **measured,
        "target_page_ms": 150,
        "target_save_ms": 100,
        "categories": params["categories"],
        "candidates": params["candidates"],
        "events": params["annotations"] if params["events"] else 0,
        "connection_per_request": connection_per_request,
        "prototypes": options["prototype"],
        "pg_options": options["pg_options"],
        **built,
        "seconds": round(time.perf_counter() - started, 1),
        # Other processes share the machine: the 1-minute load before and after.
        "loadavg": [load_before, _loadavg()],
        "cpus": os.cpu_count(),
    }


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
