"""Fitting hashing models: unsupervised ITQ codes and deep hashing (thesis 4.2.3).

* :func:`fit_itq_model` — works out of the box: pooled backbone features of a random
  sample of the archive → PCA → ITQ rotation → 256 bits → coarse-bit permutation.
* :func:`train_hashing_model` — backbone + 256-unit tanh coding layer trained with
  ``α·CE + β·batch-hard triplet`` (α = 1, β = 5, margin 2; :mod:`.losses`) on
  class-balanced batches, from the project's labelled categories or an image-folder
  dataset (one subfolder per class) for a large generic dataset. Evaluated by mAP@100 of
  held-out images (:mod:`.evaluate`).

Both save a registry version of kind "hashing" (``training.registry.save_version``:
atomic files, one active version per kind) whose config carries the bit permutation
(:func:`.bits.select_coarse_bits`) and whose ``weights.pt`` holds the whole encoder.

Resumable: ITQ caches the features of finished chunks, deep training checkpoints every
epoch, both under ``VAR_DIR/work/hashing/job-<id>/``; a resumed job skips what is done.
``ctx`` is a :class:`viva.jobs.JobContext` or :class:`training.trainer.NullContext`.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from django.conf import settings

from training.dataset import collate_skipping
from training.errors import TrainingError
from training.preprocessing import Preprocessing
from training.registry import active_version, save_version
from training.trainer import NullContext, select_device

from .bits import pack_bits, select_coarse_bits
from .evaluate import map_at_k
from .features import encode_files, load_backbone_weights, resolve_backbone_weights
from .itq import fit_itq
from .losses import HashingLoss
from .network import (
    DeepHashNet,
    ItqHashNet,
    build_pooled_backbone,
    hashing_config,
)
from .options import HashingOptions, default_network
from .sources import LabelledImages, from_categories, from_folder

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from training.models import ModelVersion

KIND = "hashing"
ITQ_CHUNK = 512
EVAL_K = 100


# --- helpers -------------------------------------------------------------------------------
def work_dir(ctx) -> Path | None:
    """Where a job keeps what a resumed run can skip (None outside jobs)."""
    job_id = getattr(ctx, "job_id", None)
    if not job_id:
        return None
    path = Path(settings.VAR_DIR) / "work" / "hashing" / f"job-{job_id}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pick_device(name: str) -> torch.device:
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return select_device(name)


def _job_of(ctx):
    job = getattr(ctx, "job", None)
    return job if job is not None and getattr(job, "pk", None) else None


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _threads(n: int):
    """Run with ``n`` CPU threads (0: unchanged); restored for the worker's next job."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _bit_balance(bits: np.ndarray) -> dict:
    ones = bits.mean(axis=0)
    return {
        "min_ones": round(float(ones.min()), 4),
        "max_ones": round(float(ones.max()), 4),
        "constant_bits": int(np.sum((ones == 0) | (ones == 1))),
    }


# --- ITQ ------------------------------------------------------------------------------------
def sample_archive(sample_size: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """A seeded random sample of archive images: ``(image ids, files)``."""
    from viva.models import Image

    ids = np.array(Image.objects.order_by("id").values_list("id", flat=True), dtype=np.int64)
    if len(ids) > sample_size:
        rng = np.random.default_rng(seed)
        ids = np.sort(rng.choice(ids, size=sample_size, replace=False))
    files = dict(Image.objects.filter(id__in=ids.tolist()).values_list("id", "file"))
    return ids, [files[int(i)] for i in ids]


def fit_itq_model(
    *,
    sample_size: int = 20000,
    ctx=None,
    user=None,
    network: str | None = None,
    init: str = "pretrained",
    image_size: int | None = None,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = 0,
    cpu_threads: int = 0,
    seed: int = 0,
) -> ModelVersion:
    """Fit unsupervised ITQ codes on a sample of the archive and save them as the active
    hashing version (returns the ``ModelVersion``)."""
    with _threads(cpu_threads):
        return _fit_itq(
            sample_size=sample_size,
            ctx=ctx or NullContext(),
            user=user,
            network=network or default_network(),
            init=init,
            image_size=image_size,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
        )


def _fit_itq(
    *,
    sample_size: int,
    ctx,
    user,
    network: str,
    init: str,
    image_size: int | None,
    device: str,
    batch_size: int,
    num_workers: int,
    seed: int,
) -> ModelVersion:
    started = time.monotonic()
    if sample_size < 2:
        raise TrainingError("The sample for hash codes needs at least 2 images.")
    ids, files = sample_archive(int(sample_size), seed)
    if len(ids) < 2:
        raise TrainingError(
            f"The archive holds {len(ids)} image(s); hash codes need at least 2. Import "
            "videos or images first."
        )
    dev = pick_device(device)
    ctx.set_device(str(dev))
    resolved = resolve_backbone_weights(network, init, log=ctx.log)
    config = hashing_config("itq", network, image_size=image_size)
    pre = Preprocessing.from_dict(config["preprocessing"])
    _seed(seed)
    features = build_pooled_backbone(network, pre)
    load_backbone_weights(features, resolved)
    features = features.to(dev).eval()
    ctx.log(
        f"Unsupervised hash codes (ITQ): {network} at {pre.image_size} px, starting from "
        f"{resolved.describe()}; {len(ids)} sampled archive images on {dev}."
    )
    if resolved.source == "random":
        ctx.log("WARNING: random backbone weights: the codes will be close to meaningless.")

    feats, ok = _chunked_features(ctx, features, files, pre, dev, batch_size, num_workers)
    if ok.sum() < 2:
        raise TrainingError(
            f"Only {int(ok.sum())} of {len(ids)} sampled images could be read; hash codes "
            "need at least 2."
        )
    ctx.progress(len(ids), len(ids) + 1, note="fitting PCA and the ITQ rotation")
    ctx.check_cancelled()
    itq = fit_itq(feats[ok], n_bits=config["bits"], seed=seed)
    bits = itq.encode(feats[ok])
    perm = select_coarse_bits(bits, seed=seed)
    model = ItqHashNet(features.cpu(), config["bits"])
    model.set_projection(itq.mean, itq.projection)
    config["network"]["feature_dim"] = int(feats.shape[1])
    config["permutation"] = perm.tolist()
    skipped = [
        {"image_id": int(i), "file": f}
        for i, f, good in zip(ids, files, ok, strict=True)
        if not good
    ]
    for s in skipped[:20]:
        ctx.log(f"Skipped unreadable image #{s['image_id']} ({s['file']}).")
    metrics = {
        "method": "itq",
        "sample_images": int(ok.sum()),
        "skipped_images": skipped,
        "itq_bits": itq.itq_bits,
        "random_bits": itq.random_bits,
        "quantization_loss": round(itq.quantization_loss, 5),
        "bit_balance": _bit_balance(bits),
        "seconds": round(time.monotonic() - started, 1),
        "device": str(dev),
    }
    if itq.random_bits:
        ctx.log(
            f"Only {itq.itq_bits} principal components could be estimated from the sample "
            f"and features; the other {itq.random_bits} bits are random projections of them."
        )
    ctx.progress(len(ids) + 1, len(ids) + 1, note="saving the model")
    ctx.check_cancelled()
    version = save_version(
        kind=KIND,
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        config=config,
        class_map=[],
        split={"sample_image_ids": ids.tolist(), "seed": seed, "sample_size": int(sample_size)},
        metrics=metrics,
        evaluations=[],
        train_config={
            "method": "itq",
            "sample_size": int(sample_size),
            "network": network,
            "init": init,
            "image_size": pre.image_size,
            "seed": seed,
            "user": getattr(user, "username", None),
        },
        weights_source=resolved.as_dict(),
        previous=active_version(KIND),
        job=_job_of(ctx),
    )
    ctx.log(
        f"Hashing model v{version.version} (ITQ) saved and active. Re-index the archive so "
        "search uses the new codes."
    )
    _cleanup(ctx)
    return version


def _chunked_features(ctx, features, files, pre, dev, batch_size, num_workers):
    """Pooled features of ``files`` in chunks; a chunk finished by an earlier attempt of
    the same job is read from its cache file instead of being computed again."""
    cache = work_dir(ctx)
    total = len(files)
    parts_f, parts_ok = [], []
    done = 0
    ctx.progress(0, total + 1, note="computing backbone features")
    for start in range(0, total, ITQ_CHUNK):
        chunk = files[start : start + ITQ_CHUNK]
        path = cache / f"features-{start:08d}.npz" if cache else None
        if path is not None and path.is_file():
            with np.load(path) as data:
                f, ok = data["features"], data["ok"]
        else:
            counter = {"n": done}

            def on_batch(n: int, counter=counter) -> None:
                counter["n"] += n
                ctx.progress(counter["n"], note="computing backbone features")

            with torch.no_grad():
                f, ok = encode_files(
                    features,
                    chunk,
                    pre,
                    dev,
                    batch_size=batch_size,
                    num_workers=num_workers,
                    on_batch=on_batch,
                )
            if path is not None and f.shape[1]:
                tmp = path.with_suffix(".tmp.npz")
                np.savez(tmp, features=f, ok=ok)
                tmp.replace(path)
        parts_f.append(f)
        parts_ok.append(ok)
        done += len(chunk)
        ctx.progress(done, note="computing backbone features")
    width = max((p.shape[1] for p in parts_f), default=0)
    parts_f = [p if p.shape[1] == width else np.zeros((len(p), width), np.float32) for p in parts_f]
    return np.concatenate(parts_f), np.concatenate(parts_ok)


def _cleanup(ctx) -> None:
    path = work_dir(ctx)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


# --- deep hashing -----------------------------------------------------------------------------
class ClassBalancedBatches(torch.utils.data.Sampler):
    """Batches drawn uniformly over the classes (thesis 4.2.3): each batch takes
    ``batch_size // samples_per_class`` distinct classes, chosen uniformly, and
    ``samples_per_class`` images of each, so every anchor has positives for the
    batch-hard triplets however skewed the class sizes are."""

    def __init__(self, labels: np.ndarray, batch_size: int, per_class: int, steps: int, seed: int):
        self.by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self.by_class = [idx for idx in self.by_class if len(idx)]
        self.classes = max(2, min(len(self.by_class), batch_size // per_class))
        self.per_class = max(per_class, batch_size // self.classes)
        self.steps = int(steps)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            chosen = self.rng.choice(len(self.by_class), size=self.classes, replace=False)
            batch = []
            for c in chosen:
                pool = self.by_class[c]
                batch.extend(
                    self.rng.choice(pool, size=self.per_class, replace=len(pool) < self.per_class)
                )
            yield [int(i) for i in batch]


def split_heldout(labels: np.ndarray, fraction: float, cap: int, seed: int):
    """Per class ``fraction`` (≥ 1, ≤ ``cap``) of the images for evaluation; the rest
    trains. Returns ``(train positions, held-out positions)``."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = min(cap, max(1, round(fraction * len(idx))), len(idx) - 1)
        held.extend(idx[:n])
        train.extend(idx[n:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


def train_hashing_model(
    *, category_ids=None, folder=None, ctx=None, user=None, **options
) -> ModelVersion:
    """Train, evaluate (mAP@100 of held-out images) and register a deep hashing model."""
    ctx = ctx or NullContext()
    try:
        opts = HashingOptions.from_options(options)
    except (TypeError, ValueError) as exc:
        raise TrainingError(str(exc)) from exc
    if folder:
        data = from_folder(Path(folder), opts.min_positives)
    else:
        data = from_categories(category_ids, opts.min_positives)
    with _threads(opts.cpu_threads):
        return DeepHashingRun(ctx, opts, data, user).run()


class DeepHashingRun:
    """State of one deep hashing run (:func:`train_hashing_model` is the entry point)."""

    def __init__(self, ctx, opts: HashingOptions, data: LabelledImages, user=None):
        self.ctx, self.opts, self.data, self.user = ctx, opts, data, user
        self.started = time.monotonic()
        self.history: list[dict] = []

    def run(self):
        o, ctx, data = self.opts, self.ctx, self.data
        _seed(o.seed)
        self.train_idx, self.held_idx = split_heldout(
            data.labels, o.heldout_fraction, o.max_heldout_per_class, o.seed
        )
        self.device = pick_device(o.device)
        ctx.set_device(str(self.device))
        self.resolved = resolve_backbone_weights(o.network, o.init, log=ctx.log)
        random_init = self.resolved.source == "random"
        lr = o.lr or (1e-3 if random_init else 1e-4)
        self.config = hashing_config(
            "deep", o.network, image_size=o.image_size, num_classes=data.num_classes
        )
        self.pre = Preprocessing.from_dict(self.config["preprocessing"])
        features = build_pooled_backbone(o.network, self.pre)
        load_backbone_weights(features, self.resolved)
        if random_init:
            for m in features.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.momentum = max(m.momentum or 0.0, 0.1)
        self.config["network"]["feature_dim"] = features.channels
        self.model = DeepHashNet(features, data.num_classes).to(self.device)
        self.loss_fn = HashingLoss(o.alpha, o.beta, o.margin)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        steps = o.steps_per_epoch or max(1, len(self.train_idx) // o.batch_size)
        total = o.epochs * steps
        ctx.log(
            f"Deep hashing: {data.num_classes} classes from {data.describe()}; "
            f"{len(self.train_idx)} training and {len(self.held_idx)} held-out images. "
            f"{o.network} at {self.pre.image_size} px from {self.resolved.describe()}; "
            f"{o.epochs} epochs × {steps} class-balanced batches of {o.batch_size} "
            f"({o.samples_per_class} per class), Adam lr {lr:g}, loss {o.alpha:g}·CE + "
            f"{o.beta:g}·batch-hard triplet (margin {o.margin:g}), on {self.device}."
        )
        if random_init:
            ctx.log("WARNING: random backbone weights (no ImageNet initialisation).")
        if data.source.get("multi_label_images_left_out"):
            ctx.log(
                f"{data.source['multi_label_images_left_out']} images positive for more than "
                "one of the categories were left out (one class per image)."
            )
        start_epoch, best = self._resume(optimizer)
        self.best_state, self.best_map = best
        ctx.progress(start_epoch * steps, total, note="training")
        for epoch in range(start_epoch, o.epochs):
            loss = self._train_epoch(optimizer, epoch, steps, total)
            held_map, chance, _codes = self.evaluate()
            ctx.metric("held-out mAP@100", epoch + 1, held_map)
            ctx.metric("epoch loss", epoch + 1, loss)
            improved = held_map > self.best_map
            if improved:
                self.best_map = held_map
                self.best_state = {
                    k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
                }
            self.history.append(
                {"epoch": epoch + 1, "loss": loss, "map_at_100": held_map, "chance": chance}
            )
            ctx.log(
                f"Epoch {epoch + 1}/{o.epochs}: loss {loss:.4f}, held-out mAP@100 "
                f"{100 * held_map:.1f} % (chance {100 * chance:.1f} %)"
                f"{' (best)' if improved else ''}."
            )
            self._checkpoint(optimizer, epoch + 1)
            ctx.check_cancelled()
        self.model.load_state_dict(self.best_state)
        return self.finish()

    # --- training -------------------------------------------------------------------------
    def _loader(self, steps: int, epoch: int):
        o, data = self.opts, self.data
        from training.dataset import Augmentation, ImageFileDataset

        train_files = [data.files[i] for i in self.train_idx]
        dataset = ImageFileDataset(
            train_files,
            np.zeros(len(train_files), dtype=np.int8),
            self.pre,
            root=data.root,
            augmentation=Augmentation() if o.augment else None,
        )
        sampler = ClassBalancedBatches(
            data.labels[self.train_idx], o.batch_size, o.samples_per_class, steps, o.seed + epoch
        )
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=o.num_workers,
            collate_fn=collate_skipping,
        )

    def _train_epoch(self, optimizer, epoch: int, steps: int, total: int) -> float:
        self.model.train()
        labels_all = torch.from_numpy(self.data.labels[self.train_idx].astype(np.int64))
        losses = []
        for step, batch in enumerate(self._loader(steps, epoch), start=1):
            if len(batch) < 2:
                continue
            images = batch.images.to(self.device)
            labels = labels_all[batch.indices].to(self.device)
            codes, logits = self.model(images)
            parts = self.loss_fn(codes, logits, labels)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            optimizer.step()
            losses.append(float(parts.total.item()))
            x = round(epoch + step / steps, 3)
            self.ctx.metric("train loss", x, losses[-1])
            self.ctx.metric("classification loss", x, float(parts.classification.item()))
            self.ctx.metric("triplet loss", x, float(parts.triplet.item()))
            self.ctx.progress(epoch * steps + step, note=f"epoch {epoch + 1}/{self.opts.epochs}")
        return float(np.mean(losses)) if losses else float("nan")

    def encode(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sign bits ``(n, 256)`` of the images at ``positions`` and which were readable."""
        self.model.eval()
        files = [self.data.files[i] for i in positions]
        values, ok = encode_files(
            self.model.encode,
            files,
            self.pre,
            self.device,
            batch_size=max(8, self.opts.batch_size),
            num_workers=self.opts.num_workers,
            root=self.data.root,
        )
        return values > 0, ok

    def evaluate(self) -> tuple[float, float, dict]:
        """mAP@100: held-out images (a seeded sample of at most ``eval_queries``) query
        themselves and a sample of the training images (at most ``eval_database``),
        ranked by Hamming distance. The same samples every epoch, so epochs compare."""
        rng = np.random.default_rng(self.opts.seed)
        held = self.held_idx
        if len(held) > self.opts.eval_queries:
            held = np.sort(rng.choice(held, self.opts.eval_queries, replace=False))
        train_sample = self.train_idx
        if len(train_sample) > self.opts.eval_database:
            train_sample = np.sort(rng.choice(train_sample, self.opts.eval_database, replace=False))
        db_idx = np.concatenate([held, train_sample])
        bits, ok = self.encode(db_idx)
        db_idx, bits = db_idx[ok], bits[ok]
        if not len(db_idx):
            raise TrainingError("None of the evaluation images could be read.")
        codes = pack_bits(bits)
        labels = self.data.labels[db_idx]
        queries = np.flatnonzero(np.isin(db_idx, held))
        value, chance = map_at_k(
            codes[queries], labels[queries], codes, labels, EVAL_K, exclude=queries
        )
        return value, chance, {"bits": bits, "labels": labels, "queries": queries}

    # --- resuming ---------------------------------------------------------------------------
    def _checkpoint(self, optimizer, epochs_done: int) -> None:
        folder = work_dir(self.ctx)
        if folder is None:
            return
        tmp = folder / "checkpoint.tmp"
        torch.save(
            {
                "epochs_done": epochs_done,
                "model": self.model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "best_state": self.best_state,
                "best_map": self.best_map,
                "history": self.history,
            },
            tmp,
        )
        tmp.replace(folder / "checkpoint.pt")

    def _resume(self, optimizer) -> tuple[int, tuple[dict, float]]:
        initial = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        folder = work_dir(self.ctx)
        path = folder / "checkpoint.pt" if folder else None
        if path is None or not path.is_file():
            return 0, (initial, float("-inf"))
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.ctx.log(f"Resuming after epoch {state['epochs_done']} (checkpoint of this job).")
        return int(state["epochs_done"]), (state["best_state"], float(state["best_map"]))

    # --- result ------------------------------------------------------------------------------
    def finish(self):
        o, data, ctx = self.opts, self.data, self.ctx
        ctx.progress(ctx_total(ctx), note="evaluating the best weights")
        held_map, chance, ev = self.evaluate()
        perm = select_coarse_bits(ev["bits"], seed=o.seed)
        self.config["permutation"] = perm.tolist()
        per_class = self._per_class(ev)
        metrics = {
            "method": "deep",
            "mAP": held_map,
            "map_at_100": held_map,
            "chance_map": chance,
            "evaluation": (
                "mAP@100 of held-out images querying held-out + sampled training images "
                "by 256-bit Hamming distance"
            ),
            "history": self.history,
            "train_images": len(self.train_idx),
            "heldout_images": len(self.held_idx),
            "bit_balance": _bit_balance(ev["bits"]),
            "seconds": round(time.monotonic() - self.started, 1),
            "device": str(self.device),
            "source": data.describe(),
        }
        ctx.check_cancelled()
        version = save_version(
            kind=KIND,
            state_dict=self.best_state,
            config=self.config,
            class_map=data.class_map,
            split={
                "train_image_ids": data.ids_at(self.train_idx),
                "heldout_image_ids": data.ids_at(self.held_idx),
                "seed": o.seed,
                "heldout_fraction": o.heldout_fraction,
                "source": data.describe(),
            },
            metrics=metrics,
            evaluations=per_class,
            train_config={**o.as_dict(), "user": getattr(self.user, "username", None)},
            weights_source=self.resolved.as_dict(),
            previous=active_version(KIND),
            job=_job_of(ctx),
        )
        ctx.log(
            f"Hashing model v{version.version} (deep) saved and active: held-out mAP@100 "
            f"{100 * held_map:.1f} % (chance {100 * chance:.1f} %). Re-index the archive so "
            "search uses the new codes."
        )
        _cleanup(ctx)
        return version

    def _per_class(self, ev: dict) -> list[dict]:
        """mAP@100 of each class's held-out queries, as the registry's evaluation rows."""
        codes = pack_bits(ev["bits"])
        labels, queries = ev["labels"], ev["queries"]
        rows = []
        for entry in self.data.class_map:
            mine = queries[labels[queries] == entry["index"]]
            if not len(mine):
                continue
            value, _ = map_at_k(codes[mine], labels[mine], codes, labels, EVAL_K, exclude=mine)
            rows.append(
                {
                    "category_id": entry.get("id"),
                    "category_name": entry["name"],
                    "ap": value,
                    "n_val_pos": int(len(mine)),
                }
            )
        return rows


def ctx_total(ctx) -> int:
    return int(getattr(ctx, "total", 0) or 0)
