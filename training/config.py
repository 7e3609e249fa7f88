"""Options of a concept training run, validated once for the page, the API and the job.

Defaults are the thesis' (6.3.5) and the original VIVA's: EfficientNet-B3 at 300 px,
phase 1 (head only, Adam 1e-3, ≤ 20 epochs), phase 2 (top 20 layers, Adam 1e-4,
≤ 40 epochs), learning rate × 0.2 on a plateau of 2 epochs, early stop after 6 epochs
without a better validation mAP, loss preset C.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from django.conf import settings

from .constants import (
    DEFAULT_PRESET,
    DEFAULT_SEED,
    INITS,
    PRESETS,
    VAL_NEGATIVE_FRACTION,
    VAL_POSITIVES,
)
from .network_specs import DEFAULT_NETWORK, NETWORKS


@dataclass
class TrainConfig:
    network: str = DEFAULT_NETWORK
    image_size: int | None = None  # None: the network's default (300 for B3)
    batch_size: int = 32
    epochs_phase1: int = 20
    epochs_phase2: int = 40
    lr_phase1: float = 1e-3
    lr_phase2: float = 1e-4
    phase2_layers: int = 20
    lr_factor: float = 0.2
    lr_patience: int = 2
    early_stop_patience: int = 6
    loss_preset: str = DEFAULT_PRESET
    gamma: float | None = None  # None: the preset's (2)
    seed: int = DEFAULT_SEED
    init: str = "pretrained"
    device: str = "auto"  # "auto": the first CUDA GPU, else the CPU
    num_workers: int | None = None  # None: VIVA_TRAIN_NUM_WORKERS
    cpu_threads: int | None = None  # torch intra-op threads; None: torch's default
    min_positives: int | None = None  # None: VIVA_TRAIN_MIN_POSITIVES
    val_positives: int = VAL_POSITIVES
    val_negative_fraction: float = VAL_NEGATIVE_FRACTION
    dropout: float = 0.2
    augment: bool = True
    amp: bool = True  # mixed precision; only used on CUDA
    activate: bool = True

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_options(cls, options: dict | None) -> TrainConfig:
        """Build from page/API/job parameters; ``ValueError`` with a plain message on
        bad input. ``backbone`` and ``preset`` are accepted as aliases."""
        data = dict(options or {})
        if "backbone" in data:
            data.setdefault("network", data.pop("backbone"))
        if "preset" in data:
            data.setdefault("loss_preset", data.pop("preset"))
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"Unknown training option(s): {', '.join(unknown)}.")
        values = {}
        for name, raw in data.items():
            if raw is None or raw == "":
                continue
            values[name] = _coerce(name, known[name].type, raw)
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(self.network in NETWORKS, f"Unknown network {self.network!r}.")
        need(
            self.image_size is None or 32 <= self.image_size <= 1024,
            "The image size must be between 32 and 1024 pixels.",
        )
        need(1 <= self.batch_size <= 1024, "The batch size must be between 1 and 1024.")
        need(
            0 <= self.epochs_phase1 <= 500 and 0 <= self.epochs_phase2 <= 500,
            "Epochs must be between 0 and 500.",
        )
        need(self.epochs_phase1 + self.epochs_phase2 > 0, "At least one epoch is needed.")
        need(0 < self.lr_phase1 < 1 and 0 < self.lr_phase2 < 1, "Learning rates must be in (0, 1).")
        need(0 < self.lr_factor < 1, "The learning-rate factor must be in (0, 1).")
        need(self.phase2_layers >= 0, "phase2_layers must be ≥ 0 (0: all layers).")
        need(self.lr_patience >= 0 and self.early_stop_patience >= 1, "Bad patience.")
        need(
            self.loss_preset.upper() in PRESETS,
            f"Unknown loss preset {self.loss_preset!r}; choose {', '.join(PRESETS)}.",
        )
        self.loss_preset = self.loss_preset.upper()
        need(self.gamma is None or 0 <= self.gamma <= 10, "gamma must be between 0 and 10.")
        need(self.init in INITS, f"init must be one of {', '.join(INITS)}.")
        need(
            self.num_workers is None or 0 <= self.num_workers <= 64,
            "num_workers must be between 0 and 64.",
        )
        need(
            self.cpu_threads is None or 1 <= self.cpu_threads <= 256,
            "cpu_threads must be between 1 and 256.",
        )
        need(
            self.min_positives is None or self.min_positives >= 2,
            "min_positives must be at least 2.",
        )
        need(0 <= self.val_positives <= 10000, "val_positives out of range.")
        need(0 <= self.val_negative_fraction < 1, "val_negative_fraction must be in [0, 1).")
        need(0 <= self.dropout < 1, "dropout must be in [0, 1).")

    # --- resolved values -----------------------------------------------------------------
    @property
    def resolved_min_positives(self) -> int:
        if self.min_positives is not None:
            return self.min_positives
        return int(getattr(settings, "VIVA_TRAIN_MIN_POSITIVES", 100))

    @property
    def resolved_num_workers(self) -> int:
        if self.num_workers is not None:
            return self.num_workers
        return int(getattr(settings, "VIVA_TRAIN_NUM_WORKERS", 2))

    def as_dict(self) -> dict:
        return asdict(self)


def _coerce(name: str, annotation, raw):
    text = str(annotation)
    try:
        if "bool" in text:
            if isinstance(raw, str):
                return raw.strip().lower() in {"1", "true", "yes", "on"}
            return bool(raw)
        if "int" in text:
            if isinstance(raw, bool) or float(raw) != int(float(raw)):
                raise ValueError
            return int(float(raw))
        if "float" in text:
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ValueError(f"Bad value for {name}: {raw!r}.") from None
