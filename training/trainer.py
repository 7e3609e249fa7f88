"""The concept training service: ``train(ctx, config) -> result``.

Steps (seed thesis 6.3.3 and 6.3.5; REFERENCE.md "Training details"):

1. label matrix and seeded split (:mod:`training.dataset`);
2. network from the config registry with ImageNet weights resolved as documented
   (:mod:`training.weights`), or random initialisation when asked for;
3. phase 1: the new head only (Adam, lr 1e-3); phase 2: also the top 20 non-batch-norm
   layers (Adam, lr 1e-4). Batch-norm statistics of the pretrained backbone stay frozen
   (small batches would spoil them). With random initialisation there are no learned
   features to protect, so both phases train every layer (phase 2 being a finer stage);
4. each epoch: validation mAP (AP per concept with scikit-learn), learning rate × 0.2
   after 2 epochs without improvement, early stop after ``early_stop_patience``; the
   best weights of a phase are restored before the next phase and at the end;
5. evaluation of the best weights and an atomic save as a new registry version.

``ctx`` is a :class:`viva.jobs.JobContext` or anything with ``progress``, ``metric``,
``log``, ``check_cancelled`` and ``set_device`` (:class:`NullContext` for scripts).
Cancellation: ``ctx.progress`` raises ``JobCancelled``, which propagates unchanged and
stores nothing.
"""

from __future__ import annotations

import contextlib
import copy
import multiprocessing
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .constants import get_preset
from .dataset import Augmentation, ImageFileDataset, make_loader
from .devices import local_device_exists, normalize_device
from .errors import TrainingError
from .label_matrix import LabelMatrix, build_label_matrix, make_split
from .losses import IncompleteFocalLoss
from .monitor import UtilisationMonitor
from .networks import ConceptNet, build_model, network_config
from .preprocessing import Preprocessing
from .scoring import evaluate, predict_loader
from .weights import load_pretrained, resolve_weights

LOG_POINTS_PER_EPOCH = 10


class NullContext:
    """A job context that prints nothing and stores metrics in memory."""

    def __init__(self, verbose: bool = False):
        self.metrics: dict[str, list] = {}
        self.lines: list[str] = []
        self.verbose = verbose
        self.device = ""

    def progress(self, done: int, total: int | None = None, note: str | None = None) -> None:
        pass

    def metric(self, series: str, step: float, value: float) -> None:
        self.metrics.setdefault(series, []).append([step, float(value)])

    def log(self, message: str) -> None:
        self.lines.append(str(message))
        if self.verbose:
            print(message, flush=True)

    def check_cancelled(self) -> None:
        pass

    def set_device(self, device: str) -> None:
        self.device = device


# --- devices and layers --------------------------------------------------------------------
def select_device(name: str) -> torch.device:
    device = normalize_device(name)
    if device.startswith("cuda"):
        if not torch.cuda.is_available() or not local_device_exists(device):
            raise TrainingError(
                f"The device {device} is not available on this worker (any more). Choose "
                "another device on the training page."
            )
    elif device != "cpu":
        raise TrainingError(f"Unknown device {name!r}.")
    return torch.device(device)


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    lr: float
    trainable: str  # "head" | "top" | "all"


def plan_phases(config: TrainConfig, random_init: bool) -> list[Phase]:
    if random_init:
        phases = [
            Phase(
                "phase 1 (all layers, random init)", config.epochs_phase1, config.lr_phase1, "all"
            ),
            Phase("phase 2 (all layers)", config.epochs_phase2, config.lr_phase2, "all"),
        ]
    else:
        top = "all" if config.phase2_layers == 0 else "top"
        phases = [
            Phase("phase 1 (head only)", config.epochs_phase1, config.lr_phase1, "head"),
            Phase(
                f"phase 2 (head + top {config.phase2_layers or 'all'} layers)",
                config.epochs_phase2,
                config.lr_phase2,
                top,
            ),
        ]
    return [p for p in phases if p.epochs > 0]


def set_trainable(model: ConceptNet, mode: str, top_layers: int = 20) -> int:
    """Freeze/unfreeze for a phase; returns the number of trainable tensors."""
    for p in model.parameters():
        p.requires_grad = mode == "all"
    for p in model.head.parameters():
        p.requires_grad = True
    if mode == "top":
        for layer in model.backbone_layers()[-top_layers:]:
            for p in layer.parameters():
                p.requires_grad = True
    return sum(1 for p in model.parameters() if p.requires_grad)


def set_train_mode(model: ConceptNet, mode: str) -> None:
    """``train()``, but the backbone's batch norm stays in eval mode unless every layer
    trains (fine-tuning keeps the ImageNet statistics)."""
    model.train()
    if mode != "all":
        for m in model.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


# --- one epoch (also what `bench training` measures) -----------------------------------------
@dataclass
class EpochStats:
    loss: float = 0.0
    images: int = 0
    steps: int = 0
    seconds: float = 0.0
    data_seconds: float = 0.0
    failed: list[tuple[int, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    *,
    scaler: torch.amp.GradScaler | None = None,
    on_step: Callable[[int, int, Callable[[], float]], None] | None = None,
    max_steps: int | None = None,
) -> EpochStats:
    """One pass over ``loader``; ``on_step(step, n_images, running_loss)`` after each
    step — ``running_loss()`` syncs the device, so the hook calls it only when it logs."""
    stats = EpochStats()
    amp = scaler is not None
    loss_sum = torch.zeros((), device=device)
    start = time.perf_counter()
    wait_start = start
    for batch in loader:
        stats.data_seconds += time.perf_counter() - wait_start
        if batch.failed:
            stats.failed.extend(batch.failed)
        if len(batch) < 2:  # batch norm needs two samples; only after skipped images
            wait_start = time.perf_counter()
            continue
        images = batch.images.to(device, non_blocking=True)
        targets = batch.targets.to(device, non_blocking=True)
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
        loss_sum += loss.detach()
        stats.steps += 1
        stats.images += len(batch)
        if on_step is not None:
            steps = stats.steps
            on_step(steps, len(batch), lambda s=steps, t=loss_sum: float(t.item()) / s)
        if max_steps is not None and stats.steps >= max_steps:
            break
        wait_start = time.perf_counter()
    stats.seconds = time.perf_counter() - start
    stats.loss = float(loss_sum.item()) / stats.steps if stats.steps else float("nan")
    return stats


# --- the service ------------------------------------------------------------------------------
@contextlib.contextmanager
def _children_allowed(ctx) -> Iterator[None]:
    """DataLoader workers are child processes; a daemonic process (some pool workers)
    may not start any. Lift the flag for the run (the workers watch their parent and
    exit with it)."""
    proc = multiprocessing.current_process()
    daemon = proc._config.get("daemon", False)
    if daemon:
        ctx.log("Running inside a daemonic worker process: allowing DataLoader workers.")
        proc._config["daemon"] = False
    try:
        yield
    finally:
        if daemon:
            proc._config["daemon"] = True


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError)
        and (
            "out of memory" in text
            or "can't allocate memory" in text
            or "is killed by signal" in text
        )
    )


class Trainer:
    """State of one run; :func:`train` is the entry point."""

    def __init__(self, ctx, config: TrainConfig):
        self.ctx = ctx
        self.config = config
        self.started = time.monotonic()
        self.failed: dict[int, str] = {}
        self.epoch = 0
        self.progress = 0
        self.history: list[dict] = []

    # --- helpers -------------------------------------------------------------------------
    def log(self, message: str) -> None:
        self.ctx.log(message)

    def note_failed(self, failed: list[tuple[int, str]], subset: np.ndarray) -> None:
        """Log each unreadable image once; ``failed`` holds positions in ``subset``."""
        for position, message in failed:
            index = int(subset[position])
            if index not in self.failed:
                self.failed[index] = message
                image_id = int(self.matrix.image_ids[index])
                self.log(
                    f"Skipped unreadable image #{image_id} ({self.matrix.files[index]}): {message}"
                )

    def seed_everything(self) -> None:
        seed = int(self.config.seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    # --- data ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        cfg = self.config
        preset = get_preset(cfg.loss_preset)
        self.preset = preset
        threshold = cfg.resolved_min_positives
        self.ctx.progress(0, note="collecting labels")
        matrix = build_label_matrix(threshold, positive_images_only=preset.positive_images_only)
        if not matrix.concept_ids:
            raise TrainingError(
                f"No concept has at least {threshold} positive labels; label more images "
                "(the dataset overview shows which concepts are close)."
            )
        self.matrix: LabelMatrix = matrix
        self.split = make_split(
            matrix,
            cfg.seed,
            val_positives=cfg.val_positives,
            val_negative_fraction=cfg.val_negative_fraction,
        )
        self.train_idx, self.val_idx = self.split.indices()
        if len(self.train_idx) < 2 or len(self.val_idx) < 1:
            raise TrainingError(
                f"Too few labelled images to train and validate ({len(self.train_idx)} for "
                f"training, {len(self.val_idx)} for validation)."
            )
        c = matrix.counts()
        self.log(
            f"{len(matrix.concept_ids)} concepts with ≥ {threshold} positives; "
            f"{len(matrix)} images ({len(self.train_idx)} training, {len(self.val_idx)} "
            f"validation); labels: {int(c['positives'].sum())} positive, "
            f"{int(c['negatives'].sum())} negative, {int(c['weak'].sum())} weak negative. "
            f"Split seed {cfg.seed}. Loss preset {preset.name}: α_pos={preset.alpha_pos}, "
            f"α_neg={preset.alpha_neg}, α_weak={preset.alpha_weak}, "
            f"γ={cfg.gamma if cfg.gamma is not None else preset.gamma}."
        )

    def make_loaders(self, pre: Preprocessing) -> None:
        cfg, m = self.config, self.matrix
        workers = cfg.resolved_num_workers
        pin = self.device.type == "cuda"
        train_ds = ImageFileDataset(
            [m.files[i] for i in self.train_idx],
            m.targets[self.train_idx],
            pre,
            augmentation=Augmentation() if cfg.augment else None,
        )
        val_ds = ImageFileDataset([m.files[i] for i in self.val_idx], m.targets[self.val_idx], pre)
        batch = min(cfg.batch_size, len(train_ds))
        self.train_loader = make_loader(
            train_ds,
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
            seed=cfg.seed,
            drop_last=len(train_ds) > batch,
            pin_memory=pin,
        )
        self.val_loader = make_loader(
            val_ds,
            batch_size=batch * 2,
            shuffle=False,
            num_workers=workers,
            pin_memory=pin,
        )

    # --- model ------------------------------------------------------------------------------
    def prepare_model(self) -> None:
        cfg = self.config
        self.model_config = network_config(
            cfg.network,
            len(self.matrix.concept_ids),
            image_size=cfg.image_size,
            dropout=cfg.dropout,
        )
        self.resolved = resolve_weights(cfg.network, cfg.init)
        model = build_model(self.model_config)
        load_pretrained(model, self.resolved)
        if self.resolved.source == "random":
            # From scratch, running batch-norm statistics must follow the weights quickly;
            # efficientnet-pytorch's TF momentum (0.01) would leave them near their initial
            # values for hundreds of steps and spoil every evaluation.
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = max(m.momentum or 0.0, 0.1)
        self.log(
            f"Network {cfg.network} at {self.model_config['preprocessing']['image_size']} "
            f"px; starting from {self.resolved.describe()}."
        )
        self.model = model.to(self.device)
        self.amp = bool(cfg.amp and self.device.type == "cuda")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        gamma = cfg.gamma
        self.loss_fn = IncompleteFocalLoss(self.preset, gamma=gamma)

    # --- loop -------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.config
        self.seed_everything()
        self.prepare_data()
        self.device = select_device(cfg.device)
        self.ctx.set_device(str(self.device))
        self.prepare_model()
        pre = Preprocessing.from_dict(self.model_config["preprocessing"])
        self.make_loaders(pre)
        phases = plan_phases(cfg, self.resolved.source == "random")
        self.steps_per_epoch = max(1, len(self.train_loader))
        self.total = sum(p.epochs for p in phases) * self.steps_per_epoch
        self.ctx.progress(0, self.total, note="starting")
        self.monitor = UtilisationMonitor(str(self.device))
        self.monitor.start()
        self.best_map = float("-inf")
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.best_epoch = 0
        self.best_scores: tuple[np.ndarray, np.ndarray] | None = None
        try:
            with _children_allowed(self.ctx):
                planned = 0
                for phase in phases:
                    self.run_phase(phase)
                    planned += phase.epochs * self.steps_per_epoch
                    self.progress = planned
                    self.ctx.progress(self.progress, note=f"{phase.name} finished")
                self.model.load_state_dict(self.best_state)
                if self.best_scores is None:
                    self.best_scores = self.validate_scores()
        except Exception as exc:
            if _out_of_memory(exc):
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # the worker's next job needs the memory
                raise TrainingError(
                    f"The {self.device} ran out of memory with batch size {cfg.batch_size} at "
                    f"{pre.image_size} px. Start again with a smaller batch size (e.g. "
                    f"{max(1, cfg.batch_size // 2)}), a smaller image size or fewer DataLoader "
                    "workers."
                ) from exc
            raise
        finally:
            self.monitor.stop()
            # Persistent DataLoader workers end with their loader; a cancelled run's
            # traceback would otherwise keep this object, and them, alive.
            self.train_loader = self.val_loader = None
        self.monitor.drain(self.ctx)
        return self.finish(*self.best_scores)

    def run_phase(self, phase: Phase) -> None:
        cfg = self.config
        n_trainable = set_trainable(self.model, phase.trainable, cfg.phase2_layers)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=phase.lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience
        )
        scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.log(
            f"{phase.name.capitalize()}: up to {phase.epochs} epochs, lr {phase.lr:g}, "
            f"{n_trainable} trainable tensors."
        )
        phase_start = self.progress
        stale = 0
        log_every = max(1, self.steps_per_epoch // LOG_POINTS_PER_EPOCH)
        for e in range(phase.epochs):
            self.epoch += 1
            epoch, base = self.epoch, self.progress
            set_train_mode(self.model, phase.trainable)
            lr = optimizer.param_groups[0]["lr"]
            note = f"{phase.name}, epoch {e + 1}/{phase.epochs}"

            def on_step(
                step: int,
                n: int,
                running: Callable[[], float],
                base: int = base,
                epoch: int = epoch,
                note: str = note,
            ) -> None:
                self.ctx.progress(base + step, note=note)
                if step % log_every == 0 or step == self.steps_per_epoch:
                    x = round(epoch - 1 + step / self.steps_per_epoch, 3)
                    self.ctx.metric("train loss", x, running())
                    self.monitor.drain(self.ctx)

            stats = train_one_epoch(
                self.model,
                self.train_loader,
                optimizer,
                self.loss_fn,
                self.device,
                scaler=scaler,
                on_step=on_step,
            )
            self.note_failed(stats.failed, self.train_idx)
            self.progress = base + self.steps_per_epoch
            indices, logits = self.validate_scores()
            targets = self.matrix.targets[self.val_idx][indices]
            val_map, _ = evaluate(
                targets, logits, self.matrix.concept_ids, self.matrix.concept_names
            )
            val_loss = (
                float(self.loss_fn(torch.from_numpy(logits), torch.from_numpy(targets)).item())
                if len(logits)
                else 0.0
            )
            score = val_map if val_map is not None else -val_loss
            self.ctx.metric("val mAP", epoch, val_map if val_map is not None else 0.0)
            self.ctx.metric("val loss", epoch, val_loss)
            self.ctx.metric("epoch loss", epoch, stats.loss)
            self.ctx.metric("learning rate", epoch, lr)
            self.ctx.metric("images/s", epoch, stats.images_per_second)
            self.history.append(
                {
                    "epoch": epoch,
                    "phase": phase.name,
                    "train_loss": stats.loss,
                    "val_loss": val_loss,
                    "val_map": val_map,
                    "lr": lr,
                    "images_per_second": stats.images_per_second,
                    "seconds": stats.seconds,
                    "data_wait_seconds": stats.data_seconds,
                }
            )
            improved = score > self.best_map + 1e-6
            self.log(
                f"Epoch {epoch} ({note}): loss {stats.loss:.4f}, val loss {val_loss:.4f}, "
                f"val mAP {_pct(val_map)}{' (best)' if improved else ''}, lr {lr:g}, "
                f"{stats.images_per_second:.1f} images/s, waited {stats.data_seconds:.1f} s "
                "for data."
            )
            scheduler.step(score)
            if improved:
                self.best_map, self.best_epoch, stale = score, epoch, 0
                self.best_state = {
                    k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
                }
                self.best_scores = (indices, logits)
            else:
                stale += 1
                if stale >= cfg.early_stop_patience:
                    self.log(f"Early stop: no better validation mAP for {stale} epochs.")
                    break
            self.ctx.check_cancelled()
        self.progress = phase_start + phase.epochs * self.steps_per_epoch
        self.model.load_state_dict(self.best_state)

    def validate_scores(self) -> tuple[np.ndarray, np.ndarray]:
        indices, logits = predict_loader(
            self.model,
            self.val_loader,
            self.device,
            amp=self.amp,
            on_failed=lambda failed: self.note_failed(failed, self.val_idx),
        )
        return indices, logits

    # --- result ---------------------------------------------------------------------------------
    def finish(self, indices: np.ndarray, logits: np.ndarray) -> dict:
        from .registry import active_version, save_version

        m, cfg = self.matrix, self.config
        targets = m.targets[self.val_idx][indices]
        mean_ap, evaluations = evaluate(targets, logits, m.concept_ids, m.concept_names)
        if mean_ap is None or not np.isfinite(mean_ap):
            raise TrainingError("The validation set has no positives; nothing to evaluate.")
        seconds = time.monotonic() - self.started
        skipped = [
            {"image_id": int(m.image_ids[i]), "file": m.files[i], "error": msg}
            for i, msg in sorted(self.failed.items())
        ]
        metrics = {
            "mAP": mean_ap,
            "best_epoch": self.best_epoch,
            "epochs": self.epoch,
            "history": self.history,
            "per_concept": {e["category_name"]: e["ap"] for e in evaluations},
            "loss_preset": self.preset.as_dict(),
            "train_images": len(self.train_idx),
            "val_images": len(self.val_idx),
            "skipped_images": skipped,
            "seconds": round(seconds, 1),
            "device": str(self.device),
            "evaluation": "AP of positives vs labelled and weak negatives (scikit-learn)",
        }
        split = self.split.as_dict(m)
        val_ids = m.image_ids[self.val_idx][indices]
        self.ctx.progress(self.total, note="saving the model")
        self.ctx.check_cancelled()
        previous = active_version("concept")
        job = getattr(self.ctx, "job", None)
        version = save_version(
            kind="concept",
            state_dict={k: v.detach().cpu() for k, v in self.best_state.items()},
            config=self.model_config,
            class_map=m.class_map(),
            split=split,
            metrics=metrics,
            evaluations=evaluations,
            train_config=cfg.as_dict(),
            weights_source=self.resolved.as_dict(),
            val_scores={"image_ids": val_ids, "logits": logits, "targets": targets},
            previous=previous,
            job=job if job is not None and getattr(job, "pk", None) else None,
            activate_it=cfg.activate,
        )
        summary = (
            f"Concept model v{version.version}: validation mAP {_pct(mean_ap)} over "
            f"{sum(e['ap'] is not None for e in evaluations)} concepts (best epoch "
            f"{self.best_epoch} of {self.epoch}), {len(skipped)} unreadable images skipped"
            f"{'; now active' if version.is_active else ''}."
        )
        self.log(summary)
        return {
            "summary": summary,
            "model_version_id": version.pk,
            "version": version.version,
            "active": version.is_active,
            "mAP": mean_ap,
            "best_epoch": self.best_epoch,
            "epochs": self.epoch,
            "concepts": len(m.concept_ids),
            "train_images": len(self.train_idx),
            "val_images": len(self.val_idx),
            "skipped_images": len(skipped),
            "weights_source": self.resolved.describe(),
            "seconds": round(seconds, 1),
        }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def train(ctx, config: TrainConfig | dict) -> dict:
    """Train, evaluate and register a concept model; returns the job's result dict."""
    if not isinstance(config, TrainConfig):
        try:
            config = TrainConfig.from_options(config)
        except ValueError as exc:
            raise TrainingError(str(exc)) from exc
    threads = torch.get_num_threads()
    if config.cpu_threads:
        # Small networks run faster on one thread (OpenMP barriers cost more than the
        # work, especially on a busy machine); restored for the worker's next job.
        torch.set_num_threads(config.cpu_threads)
    try:
        return Trainer(ctx, config).run()
    finally:
        torch.set_num_threads(threads)
