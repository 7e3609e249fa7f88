"""``bench retrieval``: top-100 of one category among 10 M predictions (DESIGN.md 7).

Measures :func:`retrieval.ranking.ranked_page` — the service behind the ranked page:
count, keys on the ``prediction_rank`` index, rows with labels — for a random category
(page 1, 100 per page, count cache cleared before every query, so each pays its count),
and beside it the combined query of the issue: two concepts ANDed (min score 0.5) and a
year range (:func:`retrieval.ranking.combined_page`). The baseline is the same top-100
read without the index (``ORDER BY`` over the category's rows found by a scan of the
run, as a table without the ranked index would), measured in the same run.

Data live in a separate bench database (``var/bench/retrieval-<n>.sqlite3``, or
``<db>_bench_retrieval_<n>`` on PostgreSQL), built once by SQL inside the database
(no rows travel through Python) and reused while the parameters and migrations are
unchanged — the user's database is never touched. Helpers come from the grid bench.
Layout: ``n / per_image`` keyframes (500 per video, 5 per shot, videos spread over
1950–2019), each with ``per_image`` predictions of distinct categories, scores uniform
in [0.05, 1): with the defaults (10 M, 100 categories, 10 per keyframe) 1 M keyframes
and 100,000 predictions per category; category ``k`` scores the keyframes ``i`` with
``i % 10 == k % 10``, so the combined query pairs categories of the same residue
(about 25 % of their keyframes pass both minimum scores of 0.5, 57 % of those the years).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from annotation.benchmarks.grid import (
    Dialect,
    drop_database,
    drop_indexes,
    ensure_database,
    migration_files,
    percentile,
    read_meta,
    use_database,
    write_meta,
)

NAME = "retrieval"
LAYOUT = 1
KEYFRAMES_PER_VIDEO = 500
KEYFRAMES_PER_SHOT = 5
BULK_TABLES = ("viva_shot", "viva_image", "retrieval_prediction")
BENCH_CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "viva-bench-retrieval",
    }
}


def log(msg: str) -> None:
    sys.stderr.write(f"[bench retrieval] {msg}\n")
    sys.stderr.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", type=int, default=10_000_000)
    parser.add_argument("--categories", type=int, default=100)
    parser.add_argument("--per-image", type=int, default=10, help="predictions per keyframe")
    parser.add_argument("--samples", type=int, default=50, help="timed queries per variant")
    parser.add_argument("--per-page", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached database")
    parser.add_argument(
        "--no-keep", dest="keep", action="store_false", help="delete the bench database after"
    )
    parser.add_argument("--db-dir", default=None, help="folder of the SQLite bench database")
    parser.add_argument("--quiet", action="store_true")


def bench_settings(predictions: int, db_dir: str | None) -> dict:
    base = connections[DEFAULT_DB_ALIAS].settings_dict
    if base["ENGINE"].endswith("sqlite3"):
        folder = Path(db_dir) if db_dir else Path(settings.VAR_DIR) / "bench"
        folder.mkdir(parents=True, exist_ok=True)
        return {"NAME": str(folder / f"retrieval-{predictions}.sqlite3")}
    if base["ENGINE"].endswith("postgresql"):
        return {"NAME": f"{base['NAME']}_bench_retrieval_{predictions}"[:63]}
    raise SystemExit(f"bench retrieval supports SQLite and PostgreSQL, not {base['ENGINE']}.")


def build(conn, params: dict, say) -> dict[str, float]:
    """Fill an empty, migrated bench database; return seconds per step."""
    from django.core.management.color import no_style

    from annotation.models import Category
    from retrieval.models import InferenceRun, Prediction
    from training.models import ModelVersion
    from viva.models import Collection, Image, Shot, Video

    d = Dialect(conn)
    timings: dict[str, float] = {}
    n_pred, n_cat, per_image = params["predictions"], params["categories"], params["per_image"]
    n_images = -(-n_pred // per_image)
    n_videos = -(-n_images // KEYFRAMES_PER_VIDEO)
    n_shots = -(-n_images // KEYFRAMES_PER_SHOT)
    shots_per_video = KEYFRAMES_PER_VIDEO // KEYFRAMES_PER_SHOT
    step_c = n_cat // per_image

    def step(name: str, sql: str) -> None:
        t0 = time.perf_counter()
        with conn.cursor() as cursor:
            cursor.execute(sql)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0

    with conn.cursor() as cursor:
        if d.sqlite:
            for pragma in (
                "journal_mode = OFF",
                "synchronous = OFF",
                "cache_size = -1000000",
                "temp_store = MEMORY",
                "threads = 4",
                "foreign_keys = OFF",
            ):
                cursor.execute(f"PRAGMA {pragma}")
        else:
            cursor.execute("SET synchronous_commit = off")
            cursor.execute("SET maintenance_work_mem = '1GB'")
    recreate = {table: drop_indexes(conn, table) for table in BULK_TABLES}
    collection = Collection.objects.create(name="Bench archive").pk
    categories = [
        Category.objects.create(name=f"Bench concept {k + 1:03d}").pk for k in range(n_cat)
    ]
    if categories != list(range(categories[0], categories[0] + n_cat)):
        raise RuntimeError("bench categories must have consecutive ids")
    version = ModelVersion.objects.create(
        version=1, directory="concept/1", weights_path="concept/1/w.pt"
    )
    run = InferenceRun.objects.create(
        kind="concept",
        model_version=version,
        status=InferenceRun.Status.COMPLETE,
        score_floor=0.05,
        is_published=True,
        n_images=n_images,
    )
    say(f"loading {n_videos:,} videos, {n_shots:,} shots, {n_images:,} keyframes …")
    step(
        "videos",
        d.insert_series(
            n_videos,
            "viva_video",
            "id, title, file, original_name, sha256, size_bytes, year, fps, n_frames,"
            " duration_ms, width, height, metadata, created_at, collection_id",
            f"g + 1, 'Bench video ' || (g + 1), 'bench/' || (g + 1) || '.mp4', '',"
            f" {d.hex64('g + 1', 'r')}, 1, 1950 + g % 70, 25.0, 12500, 500000, 1280, 720,"
            f" '{{}}', {d.ts('g')}, {collection}",
        ),
    )
    step(
        "shots",
        d.insert_series(
            n_shots,
            "viva_shot",
            "id, video_id, number, start_frame, end_frame, start_ms, end_ms",
            f"g + 1, g / {shots_per_video} + 1, g % {shots_per_video} + 1,"
            f" (g % {shots_per_video}) * 125, (g % {shots_per_video}) * 125 + 124,"
            f" (g % {shots_per_video}) * 5000, (g % {shots_per_video}) * 5000 + 5000",
        ),
    )
    step(
        "images",
        d.insert_series(
            n_images,
            "viva_image",
            "id, collection_id, file, thumbnail, sha256, width, height, video_id, shot_id,"
            " frame, time_ms, original_name, created_at",
            f"g + 1, {collection}, 'bench/kf/' || (g + 1) || '.jpg', '',"
            f" {d.hex64('g + 1', '')}, 1280, 720, g / {KEYFRAMES_PER_VIDEO} + 1,"
            f" g / {KEYFRAMES_PER_SHOT} + 1, (g % {KEYFRAMES_PER_VIDEO}) * 25,"
            f" (g % {KEYFRAMES_PER_VIDEO}) * 1000, '', {d.ts('g')}",
        ),
    )
    say(f"loading {n_pred:,} predictions over {n_cat} categories …")
    # Prediction g: keyframe g / per_image + 1; the keyframe's per_image categories are
    # distinct (slot * step_c + keyframe % step_c); a pseudo-random score in [0.05, 1).
    step(
        "predictions",
        d.insert_series(
            n_pred,
            Prediction._meta.db_table,
            "id, run_id, category_id, image_id, score",
            f"g + 1, {run.pk},"
            f" {categories[0]} + (g % {per_image}) * {step_c} + (g / {per_image}) % {step_c},"
            f" g / {per_image} + 1, 0.05 + 0.95 * ((g * 2654435761 + 12345) % 1000003) / 1000003.0",
        ),
    )
    say("building indexes …")
    t0 = time.perf_counter()
    with conn.cursor() as cursor:
        for table in BULK_TABLES:
            for sql in recreate[table]:
                cursor.execute(sql)
        if not d.sqlite:
            for sql in conn.ops.sequence_reset_sql(no_style(), [Video, Shot, Image, Prediction]):
                cursor.execute(sql)
    timings["indexes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with conn.cursor() as cursor:
        if d.sqlite:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("ANALYZE")
        else:
            for table in (*BULK_TABLES, "viva_video"):
                cursor.execute(f'VACUUM ANALYZE "{table}"')
    timings["analyze"] = time.perf_counter() - t0
    return timings


def prepare(params: dict, rebuild: bool, say) -> dict:
    """Open the bench database on the default connection, building it when needed."""
    from django.core.management import call_command

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
        and all(migrations.get(k) == v for k, v in applied.items())
    ):
        call_command("migrate", verbosity=0, interactive=False)
        return {"cached": True}
    say(f"building {conn.settings_dict['NAME']} …")
    drop_database(conn)
    ensure_database(conn)
    t0 = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    timings = build(conn, params, say)
    timings["migrate"] = time.perf_counter() - t0 - sum(timings.values())
    conn.close()
    write_meta(conn, {"params": params, "migrations": migrations})
    return {
        "cached": False,
        "build_s": round(sum(timings.values()), 1),
        "build_steps_s": {k: round(v, 1) for k, v in timings.items()},
    }


def _ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"p50": round(percentile(ms, 50), 2), "p95": round(percentile(ms, 95), 2)}


def measure(options: dict, params: dict) -> dict[str, Any]:
    from django.core.cache import cache

    from annotation.models import Category
    from retrieval.models import Prediction
    from retrieval.query import Filters, Query, Term
    from retrieval.ranking import combined_page, published_run, published_runs, ranked_page

    rng = random.Random(options["seed"])
    run = published_run("concept")
    runs = published_runs()
    categories = list(Category.objects.order_by("pk"))
    per_page = options["per_page"]
    step_c = params["categories"] // params["per_image"]

    def timed(fn) -> tuple[float, Any]:
        cache.clear()  # every query pays its count
        t0 = time.perf_counter()
        value = fn()
        return time.perf_counter() - t0, value

    # Warm-up (page cache), then the samples.
    for category in categories[:3]:
        ranked_page(run, category, Filters(), per_page=per_page)
    ranked, sizes = [], []
    for _ in range(options["samples"]):
        category = rng.choice(categories)
        seconds, page = timed(lambda c=category: ranked_page(run, c, Filters(), per_page=per_page))
        ranked.append(seconds)
        sizes.append(len(page.items))
    combined, combined_sizes = [], []
    for _ in range(options["samples"]):
        # Two categories that share keyframes (same residue, see the module docstring).
        a = rng.choice(categories)
        partners = [c for c in categories if c.pk != a.pk and (c.pk - a.pk) % step_c == 0]
        b = rng.choice(partners)
        query = Query(
            (Term(a.pk, "and", 0.5), Term(b.pk, "and", 0.5)),
            Filters(year_from=1950, year_to=1989),
        )
        seconds, page = timed(
            lambda q=query, c=a: combined_page(q, runs, label_category_id=c.pk, per_page=per_page)
        )
        combined.append(seconds)
        combined_sizes.append(page.total)
    out: dict[str, Any] = {
        "ranked": _ms(ranked),
        "combined": _ms(combined),
        "page_items_min": min(sizes),
        "combined_total_median": sorted(combined_sizes)[len(combined_sizes) // 2],
    }
    if not options["no_baseline"]:
        # Without the ranked index: the run's rows scanned, the category's sorted.
        baseline = []
        for _ in range(max(5, options["samples"] // 5)):
            category = rng.choice(categories)

            def naive(c=category):
                qs = (
                    Prediction.objects.filter(run_id=run.pk)
                    .extra(
                        where=[f"{Prediction._meta.db_table}.category_id + 0 = %s"], params=[c.pk]
                    )
                    .order_by("-score", "id")
                )
                return list(qs.values_list("image_id", "score")[:per_page])

            baseline.append(timed(naive)[0])
        out["baseline"] = _ms(baseline)
    return out


def run(**options: Any) -> dict[str, Any]:
    from django.test.utils import override_settings

    params = {
        "layout": LAYOUT,
        "predictions": options["predictions"],
        "categories": options["categories"],
        "per_image": options["per_image"],
    }
    if params["per_image"] < 1 or params["categories"] < 2 * params["per_image"]:
        raise SystemExit("bench retrieval needs --categories ≥ 2 × --per-image ≥ 2.")
    if params["predictions"] < params["per_image"]:
        raise SystemExit("bench retrieval needs at least --per-image predictions.")
    say = (lambda msg: None) if options["quiet"] else log
    overrides = bench_settings(params["predictions"], options["db_dir"])
    with use_database(overrides) as conn, override_settings(CACHES=BENCH_CACHES):
        try:
            built = prepare(params, options["rebuild"], say)
            say("measuring …")
            measured = measure(options, params)
        finally:
            from django.contrib.contenttypes.models import ContentType
            from django.core.cache import cache

            cache.clear()
            ContentType.objects.clear_cache()
            if not options["keep"]:
                drop_database(conn)
        vendor = conn.vendor
    result: dict[str, Any] = {
        "name": NAME,
        "db": vendor,
        "n_predictions": params["predictions"],
        "categories": params["categories"],
        "per_page": options["per_page"],
        "p95_ms": measured["ranked"]["p95"],
        "p50_ms": measured["ranked"]["p50"],
        "combined_p95_ms": measured["combined"]["p95"],
        "combined_p50_ms": measured["combined"]["p50"],
        "combined_total_median": measured["combined_total_median"],
        "page_items_min": measured["page_items_min"],
        "samples": options["samples"],
        "target_p95_ms": 100,
    }
    if "baseline" in measured:
        result["baseline_p95_ms"] = measured["baseline"]["p95"]
        result["ours"] = result["p95_ms"]
        result["baseline"] = result["baseline_p95_ms"]
        result["ratio"] = round(result["baseline_p95_ms"] / max(result["p95_ms"], 1e-6), 2)
    result.update(built)
    return result
