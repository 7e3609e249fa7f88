"""``manage.py bench training``: our training loop vs bare forward+backward+step.

*Ours* is what a training run does per step (``training.trainer.train_one_epoch``): real
JPEG files (keyframe-sized, 4:3) decoded and augmented by DataLoader workers (random
resized crop, flip, brightness/contrast, JPEG re-encoding), uint8 batches moved to the
device, forward, the incomplete focal loss, backward, Adam step and the progress hook.
The *baseline* is the same network, loss, optimizer and batch size on one in-memory
tensor batch. Both train every layer (the costliest phase) in the same process, and they
alternate step by step (a baseline step runs inside our loop's per-step hook), so a
load change on a shared machine hits both alike; images/s are totals over the measured
steps of all rounds. DESIGN.md 7 asks ours/baseline ≥ 0.85.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from training.dataset import PREFETCH_FACTOR, Augmentation, ImageFileDataset, make_loader
from training.devices import device_name
from training.losses import POS, WEAK, IncompleteFocalLoss
from training.networks import build_model, network_config
from training.preprocessing import Preprocessing
from training.synthetic import write_shape_files
from training.trainer import select_device, set_train_mode, set_trainable, train_one_epoch

NUM_CLASSES = 10


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="efficientnet-b0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="Measured steps per round.")
    parser.add_argument("--warmup", type=int, default=1, help="Unmeasured steps first.")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers.")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both loops (0: torch's default). 1 by default: on a "
        "2-core machine shared with other work, OpenMP with 2 threads measured up to 4x "
        "slower and far noisier, which drowns the comparison.",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda:0 … or auto.")
    parser.add_argument(
        "--images",
        type=int,
        default=0,
        help="JPEG files to generate (default: enough for a steady state).",
    )


def _files(folder: Path, count: int, image_size: int) -> list[str]:
    # Keyframe-like 4:3 files a bit larger than the network input, like an archive's
    # keyframes; drawn once, shared by every round.
    size = (image_size * 4 // 3, image_size)
    per_concept = max(1, -(-count // 3))
    files = write_shape_files(folder, per_concept, size=size, seed=11, pair_fraction=0.0)
    return [p.name for p, _ in files][:count]


def _model(name: str, image_size: int, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(network_config(name, NUM_CLASSES, image_size=image_size)).to(device)
    set_trainable(model, "all")
    set_train_mode(model, "all")
    return model


def _targets(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.where(rng.random((n, NUM_CLASSES)) < 0.1, POS, WEAK).astype(np.int8)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Baseline:
    """The bare loop: same network, loss, optimizer and batch size, one in-memory batch."""

    def __init__(self, opts: dict, device: torch.device, images: torch.Tensor):
        self.device = device
        self.model = _model(opts["model"], opts["image_size"], device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.loss_fn = IncompleteFocalLoss("C")
        batch = opts["batch_size"]
        # The same pictures as ours (decoded once, no augmentation): random noise is
        # another workload for the CPU (activation magnitudes, possible denormals).
        self.images = images.to(device)
        targets = _targets(batch, np.random.default_rng(1))
        self.targets = torch.from_numpy(targets).to(device)
        self.amp = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None

    def step(self) -> float:
        """One step; returns its seconds."""
        _sync(self.device)
        start = time.perf_counter()
        with torch.autocast(self.device.type, enabled=self.amp):
            logits = self.model(self.images)
        loss = self.loss_fn(logits, self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        _sync(self.device)
        return time.perf_counter() - start


def run_round(opts: dict, device: torch.device, folder: Path, files: list[str]) -> dict:
    """Our loop, with one baseline step run inside its per-step hook: the two alternate
    step by step, so a load change on a shared machine hits both alike. Our step time
    is from the end of the baseline step to the end of our next step (data wait
    included); the DataLoader workers keep decoding meanwhile, as they do in training."""
    pre = Preprocessing(image_size=opts["image_size"])
    batch_images = torch.stack([pre.load(folder / f) for f in files[: opts["batch_size"]]])
    baseline = Baseline(opts, device, batch_images)
    model = _model(opts["model"], opts["image_size"], device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = IncompleteFocalLoss("C")
    dataset = ImageFileDataset(
        files,
        _targets(len(files), np.random.default_rng(0)),
        pre,
        root=folder,
        augmentation=Augmentation(),
    )
    loader = make_loader(
        dataset,
        batch_size=opts["batch_size"],
        shuffle=True,
        num_workers=opts["workers"],
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    warmup = opts["warmup"]
    ours_s: list[float] = []
    base_s: list[float] = []
    images: list[int] = []
    resume = [time.perf_counter()]

    def on_step(step: int, n: int, running) -> None:
        _sync(device)
        ours = time.perf_counter() - resume[0]
        base = baseline.step()
        if step > warmup:
            ours_s.append(ours)
            base_s.append(base)
            images.append(n)
        resume[0] = time.perf_counter()

    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    stats = train_one_epoch(
        model,
        loader,
        optimizer,
        loss_fn,
        device,
        scaler=scaler,
        on_step=on_step,
        max_steps=warmup + opts["steps"],
    )
    del loader  # stops the workers
    return {
        "ours_s": sum(ours_s),
        "baseline_s": sum(base_s),
        "images": sum(images),
        "steps": stats.steps,
        "data_wait_s": stats.data_seconds,
    }


def pipeline_cost(opts: dict, folder: Path, files: list[str], n: int = 64) -> float:
    """Milliseconds of one CPU core per training image for decoding and augmenting
    (the work DataLoader workers do beside the network): a noise-robust indicator of
    how much of the machine the pipeline takes."""
    pre = Preprocessing(image_size=opts["image_size"])
    dataset = ImageFileDataset(
        files[:n],
        np.zeros((min(n, len(files)), NUM_CLASSES), np.int8),
        pre,
        root=folder,
        augmentation=Augmentation(),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        start = time.process_time()
        for i in range(len(dataset)):
            dataset[i]
        return 1000 * (time.process_time() - start) / len(dataset)
    finally:
        torch.set_num_threads(threads)


def run(**opts) -> dict:
    threads = torch.get_num_threads()
    try:
        return _run(opts)
    finally:
        torch.set_num_threads(threads)


def _run(opts: dict) -> dict:
    random.seed(0)
    device = select_device(opts["device"])
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # Enough files that the measured steps run in the steady state: the workers'
    # read-ahead queue is full after the warm-up, and every batch taken from it has to
    # be decoded anew while the network computes (with fewer files the whole set would
    # be decoded during the warm-up and the pipeline's cost would not be measured).
    ahead = max(1, opts["workers"]) * PREFETCH_FACTOR + 1
    needed = opts["batch_size"] * (opts["warmup"] + opts["steps"] + ahead)
    count = max(opts["images"] or needed, needed)
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        files = _files(folder, count, opts["image_size"])
        prepare_s = time.perf_counter() - t0
        pipeline_ms = pipeline_cost(opts, folder, files)
        for _ in range(max(1, opts["rounds"])):
            rounds.append(run_round(opts, device, folder, files))
    images = sum(r["images"] for r in rounds)
    ours_ips = images / sum(r["ours_s"] for r in rounds)
    base_ips = images / sum(r["baseline_s"] for r in rounds)
    return {
        "ours_ips": round(ours_ips, 3),
        "baseline_ips": round(base_ips, 3),
        "ratio": round(ours_ips / base_ips, 4),
        "device": str(device),
        "device_name": device_name(device),
        "model": opts["model"],
        "image_size": opts["image_size"],
        "batch_size": opts["batch_size"],
        "steps": opts["steps"] * len(rounds),
        "rounds": len(rounds),
        "workers": opts["workers"],
        "threads": torch.get_num_threads(),
        "ours_data_wait_total_s": round(sum(r["data_wait_s"] for r in rounds), 3),
        "ours_rounds_ips": [round(r["images"] / r["ours_s"], 3) for r in rounds],
        "baseline_rounds_ips": [round(r["images"] / r["baseline_s"], 3) for r in rounds],
        "pipeline_cpu_ms_per_image": round(pipeline_ms, 2),
        "baseline_ms_per_image": round(1000 / base_ips, 1),
        "prepare_s": round(prepare_s, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
