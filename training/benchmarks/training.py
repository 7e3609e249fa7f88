"""``manage.py bench training``: our training loop vs bare forward+backward+step.

*Ours* is what a training run does per step (``training.trainer.train_one_epoch``): real
JPEG files (keyframe-sized, 4:3) decoded and augmented by DataLoader workers (random
resized crop, flip, brightness/contrast, JPEG re-encoding), uint8 batches moved to the
device, forward, the incomplete focal loss, backward, Adam step and the progress hook.
The *baseline* is the same network, loss, optimizer and batch size on one in-memory
tensor batch. Both run every layer (the costliest phase), in the same process, one
after the other, in rounds; the best round of each counts (the machine may be shared).
DESIGN.md 7 asks ours/baseline ≥ 0.85.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from training.dataset import Augmentation, ImageFileDataset, make_loader
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
    parser.add_argument("--steps", type=int, default=4, help="Measured steps per round.")
    parser.add_argument("--warmup", type=int, default=1, help="Unmeasured steps first.")
    parser.add_argument("--rounds", type=int, default=2)
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
        help="JPEG files to generate (default: enough for one round).",
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


def run_ours(opts: dict, device: torch.device, folder: Path, files: list[str]) -> dict:
    model = _model(opts["model"], opts["image_size"], device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = IncompleteFocalLoss("C")
    pre = Preprocessing(image_size=opts["image_size"])
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
    marks: list[tuple[float, int]] = []

    def on_step(step: int, n: int, running) -> None:
        _sync(device)
        marks.append((time.perf_counter(), n))

    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    total = opts["warmup"] + opts["steps"]
    stats = train_one_epoch(
        model, loader, optimizer, loss_fn, device, scaler=scaler, on_step=on_step, max_steps=total
    )
    del loader  # stops the workers
    start, _ = marks[opts["warmup"] - 1] if opts["warmup"] else (marks[0][0], 0)
    measured = marks[opts["warmup"] :] if opts["warmup"] else marks[1:]
    images = sum(n for _, n in measured)
    seconds = marks[-1][0] - start
    return {
        "ips": images / seconds,
        "seconds": seconds,
        "steps": stats.steps,
        "data_wait_s": stats.data_seconds,
    }


def run_baseline(opts: dict, device: torch.device) -> dict:
    model = _model(opts["model"], opts["image_size"], device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = IncompleteFocalLoss("C")
    size, batch = opts["image_size"], opts["batch_size"]
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
    images = images.to(device)
    targets = torch.from_numpy(_targets(batch, np.random.default_rng(1))).to(device)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    start = 0.0
    for step in range(opts["warmup"] + opts["steps"]):
        if step == opts["warmup"]:
            _sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, enabled=amp):
            logits = model(images)
        loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
    _sync(device)
    seconds = time.perf_counter() - start
    return {"ips": batch * opts["steps"] / seconds, "seconds": seconds}


def run(**opts) -> dict:
    random.seed(0)
    device = select_device(opts["device"])
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    needed = opts["batch_size"] * (opts["warmup"] + opts["steps"])
    count = max(opts["images"] or needed, needed)
    ours, base = [], []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        files = _files(folder, count, opts["image_size"])
        prepare_s = time.perf_counter() - t0
        for _ in range(max(1, opts["rounds"])):
            base.append(run_baseline(opts, device))
            ours.append(run_ours(opts, device, folder, files))
    best_ours = max(r["ips"] for r in ours)
    best_base = max(r["ips"] for r in base)
    return {
        "ours_ips": round(best_ours, 3),
        "baseline_ips": round(best_base, 3),
        "ratio": round(best_ours / best_base, 4),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({os.cpu_count()} cores)",
        "model": opts["model"],
        "image_size": opts["image_size"],
        "batch_size": opts["batch_size"],
        "steps": opts["steps"],
        "rounds": len(ours),
        "workers": opts["workers"],
        "threads": torch.get_num_threads(),
        "ours_data_wait_total_s": round(min(r["data_wait_s"] for r in ours), 3),
        "ours_rounds_ips": [round(r["ips"], 3) for r in ours],
        "baseline_rounds_ips": [round(r["ips"], 3) for r in base],
        "prepare_s": round(prepare_s, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
