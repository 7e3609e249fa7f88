"""``manage.py bench inference``: the archive inference pipeline vs the bare forward pass.

*Ours* is what an inference job does per chunk (:mod:`retrieval.inference`): claim the
chunk in the database, read its keyframe rows, read the JPEG files (keyframe-sized, 4:3),
decode and resize them in DataLoader workers, move uint8 batches to the device, forward,
sigmoid, and write the scores ≥ the floor as ``Prediction`` rows in the transaction that
marks the chunk done. The *baseline* is the same network object, batch size and
precision (autocast on CUDA) on one in-memory tensor batch of the same pictures.

The two alternate batch by batch (a baseline batch runs, timed apart, in our per-batch
hook), so a load change on a shared machine hits both alike; images/s are totals over
all measured chunks (the first chunk is a warm-up). Our time includes everything per
chunk: the claim, the keyframe query, starting the loader processes, waiting for data,
the forward passes and the transaction with the predictions. The random head is
calibrated so that 5 % of the scores pass the floor, as planned for a trained model.
The database is a temporary SQLite file with the project's schema (never the user's
database). DESIGN.md 7 asks ours/baseline ≥ 0.9.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from training.devices import device_name


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="efficientnet-b0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concepts", type=int, default=100)
    parser.add_argument(
        "--chunk", type=int, default=128, help="Keyframes per chunk (one measured unit)."
    )
    parser.add_argument(
        "--chunks", type=int, default=4, help="Measured chunks (after one warm-up chunk)."
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers.")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default); 1 leaves the other cores to decoding, "
        "as in bench training.",
    )
    parser.add_argument("--floor", type=float, default=0.05)
    parser.add_argument(
        "--stored",
        type=float,
        default=0.05,
        help="Share of scores the random head is calibrated to put above the floor "
        "(docs/prediction-storage.md plans with 5 %%).",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda:0 … or auto.")


@contextmanager
def _temporary_database(path: Path):
    """The default connection on a fresh SQLite file with every migration applied.

    A new connection object replaces the default one for the duration (the backend class
    of an existing connection cannot change), so this also works when the configured
    database is PostgreSQL — which the bench never touches.
    """
    from django.core.management import call_command
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.db.utils import load_backend

    original = connections[DEFAULT_DB_ALIAS]
    bench_settings = {
        **original.settings_dict,
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {},
        "USER": "",
        "PASSWORD": "",
        "HOST": "",
        "PORT": "",
        "CONN_MAX_AGE": 0,
    }
    bench = load_backend("django.db.backends.sqlite3").DatabaseWrapper(
        bench_settings, DEFAULT_DB_ALIAS
    )
    connections[DEFAULT_DB_ALIAS] = bench
    try:
        call_command("migrate", verbosity=0, interactive=False)
        yield bench
    finally:
        bench.close()
        connections[DEFAULT_DB_ALIAS] = original


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _archive(folder: Path, opts: dict, n: int):
    """Keyframe rows for ``n`` JPEG files, 100 concept categories, a model version row
    and an inference run (planned into chunks of ``opts['chunk']``)."""
    from annotation.models import Category
    from retrieval.inference import plan_chunks
    from retrieval.models import InferenceRun
    from training.models import ModelVersion
    from training.networks import network_config
    from training.synthetic import write_shape_files
    from viva.models import Collection, Image, Video

    size = (opts["image_size"] * 4 // 3, opts["image_size"])
    files = write_shape_files(folder, -(-n // 3), size=size, seed=5, pair_fraction=0.0)[:n]
    collection = Collection.objects.create(name="Bench archive")
    video = Video.objects.create(
        collection=collection,
        title="Bench video",
        file="videos/bench.mp4",
        sha256="b" * 64,
        fps=25,
        n_frames=n * 10,
        duration_ms=n * 400,
        width=size[0],
        height=size[1],
    )
    Image.objects.bulk_create(
        Image(
            collection=collection,
            video=video,
            frame=i * 10,
            file=path.name,
            sha256=f"bench-{i}",
            width=size[0],
            height=size[1],
        )
        for i, (path, _) in enumerate(files)
    )
    categories = Category.objects.bulk_create(
        Category(name=f"concept {k:03d}", kind=Category.Kind.CONCEPT)
        for k in range(opts["concepts"])
    )
    config = network_config(opts["model"], opts["concepts"], image_size=opts["image_size"])
    version = ModelVersion.objects.create(
        version=1,
        directory="concept/1",
        weights_path="concept/1/weights.pt",
        config=config,
        class_map=[{"index": k, "id": c.pk, "name": c.name} for k, c in enumerate(categories)],
    )
    run = InferenceRun.objects.create(
        model_version=version, score_floor=opts["floor"], collection_ids=[]
    )
    plan_chunks(run, opts["chunk"])
    return run, config, [c.pk for c in categories]


def calibrate_head(model, images, floor: float, share: float) -> str:
    """A random head scores every concept ≈ 0.5, so every score would pass the floor:
    20× the rows of a trained model. Shift each concept's bias so that ``share`` of the
    sample batch's scores lie above the floor, as a trained model's would. A randomly
    initialised EfficientNet's features are ≈ 0 for every image (1e-13 measured), so its
    logits do not depend on the image: then ``share`` of the concepts get a bias above
    the floor and the rest one far below — the same number of rows per keyframe."""
    import math

    import torch

    threshold = math.log(floor / (1 - floor))
    with torch.inference_mode():
        bias = model.head[-1].bias
        bias.zero_()
        logits = model(images).float()
        if logits.std(0).mean().item() > 1e-4:
            bias.copy_(threshold - torch.quantile(logits, 1.0 - share, dim=0))
            return "quantile"
        k = max(1, round(share * bias.numel()))
        bias.fill_(threshold - 10.0 - logits.mean().item())
        bias[:k] = threshold + 3.0 - logits.mean().item()
        return "fixed-classes"


def run(**opts) -> dict:
    import torch

    threads = torch.get_num_threads()
    try:
        return _run(opts)
    finally:
        torch.set_num_threads(threads)


def _run(opts: dict) -> dict:
    import torch

    from retrieval import inference as inf
    from retrieval.models import Prediction
    from training.networks import build_model
    from training.preprocessing import Preprocessing
    from training.trainer import select_device

    device = select_device(opts["device"])
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    batch = opts["batch_size"]
    warmup_chunks = 1
    n_chunks = opts["chunks"] + warmup_chunks
    n_images = opts["chunk"] * n_chunks
    amp = device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        with _temporary_database(folder / "bench.sqlite3"):
            run_row, config, category_ids = _archive(folder / "files", opts, n_images)
            prepare_s = time.perf_counter() - t0
            torch.manual_seed(0)
            model = build_model(config).to(device).eval()
            pre = Preprocessing.from_dict(config["preprocessing"])
            files = [f for _, f in inf.chunk_images(run_row.chunks.first(), run_row)[:batch]]
            images = torch.stack([pre.load(folder / "files" / f) for f in files]).to(device)
            calibration = calibrate_head(model, images, opts["floor"], opts["stored"])

            @torch.inference_mode()
            def baseline_batch():
                with torch.autocast(device.type, enabled=amp):
                    out = model(images)
                out.float().cpu()

            ours_s = base_s = 0.0
            scored = 0
            for number in range(n_chunks):
                # Ours: one whole chunk through the job's code path, with one baseline
                # batch run (and timed apart) after each of our batches: the two alternate
                # batch by batch, as in bench training.
                in_chunk = [0.0]

                def on_batch(_n: int, in_chunk=in_chunk) -> None:
                    _sync(device)
                    t = time.perf_counter()
                    baseline_batch()
                    _sync(device)
                    in_chunk[0] += time.perf_counter() - t

                _sync(device)
                start = time.perf_counter()
                chunk = inf.claim_chunk(run_row, "bench")
                result = inf.score_images(
                    model,
                    pre,
                    inf.chunk_images(chunk, run_row),
                    device=device,
                    batch_size=batch,
                    num_workers=opts["workers"],
                    root=folder / "files",
                    on_batch=on_batch,
                )
                assert inf.write_chunk(chunk, "bench", result, category_ids, opts["floor"])
                _sync(device)
                total = time.perf_counter() - start
                if number >= warmup_chunks:
                    ours_s += total - in_chunk[0]
                    n_batches = -(-chunk.n_images // batch)
                    base_s += in_chunk[0] * chunk.n_images / (n_batches * batch)
                    scored += len(result.image_ids)
            rows = Prediction.objects.count()
    ours_ips = scored / ours_s
    base_ips = scored / base_s
    return {
        "ours_ips": round(ours_ips, 3),
        "baseline_ips": round(base_ips, 3),
        "ratio": round(ours_ips / base_ips, 4),
        "device": str(device),
        "device_name": device_name(device),
        "model": opts["model"],
        "image_size": opts["image_size"],
        "batch_size": batch,
        "concepts": opts["concepts"],
        "chunk": opts["chunk"],
        "chunks": opts["chunks"],
        "workers": opts["workers"],
        "threads": torch.get_num_threads(),
        "floor": opts["floor"],
        "predictions_written": rows,
        "stored_fraction": round(rows / (n_images * opts["concepts"]), 4),
        "head_calibration": calibration,
        "prepare_s": round(prepare_s, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
