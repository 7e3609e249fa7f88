"""Options of a deep hashing run (torch-free: the page validates them before a start)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from training.network_specs import get_spec

ALPHA = 1.0  # thesis 4.2.3, eq. 4.4 (here, not in .losses: the page must not need torch)
BETA = 5.0
MARGIN = 2.0
DEFAULT_NETWORK = "efficientnet-b3"  # the thesis' backbone (4.2.3)


def default_network() -> str:
    """``VIVA_HASHING_NETWORK`` if set (e.g. a tiny network for tests and demos), else B3."""
    from django.conf import settings

    return str(getattr(settings, "VIVA_HASHING_NETWORK", "") or DEFAULT_NETWORK)


@dataclass
class HashingOptions:
    """Options of a deep hashing run; defaults are the thesis' (4.2.3) where it has one."""

    network: str = field(default_factory=default_network)
    init: str = "pretrained"
    image_size: int | None = None
    epochs: int = 5
    lr: float | None = None  # None: 1e-4 from ImageNet weights (thesis), 1e-3 from scratch
    batch_size: int = 128
    samples_per_class: int = 4
    min_positives: int = 20
    heldout_fraction: float = 0.2
    max_heldout_per_class: int = 50
    eval_queries: int = 2000  # held-out images that query (a seeded sample)
    eval_database: int = 2000  # training images added to the searched database
    steps_per_epoch: int | None = None
    alpha: float = ALPHA
    beta: float = BETA
    margin: float = MARGIN
    augment: bool = True
    device: str = "auto"
    num_workers: int = 0
    cpu_threads: int = 0  # 0: torch's default; small networks run faster on one thread
    seed: int = 0

    @classmethod
    def from_options(cls, options: dict) -> HashingOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"Unknown options: {', '.join(unknown)}.")
        opts = cls(**{k: v for k, v in options.items() if v is not None})
        get_spec(opts.network)
        checks = [
            (opts.init in ("pretrained", "random"), "init must be pretrained or random"),
            (1 <= opts.epochs <= 500, "epochs must be between 1 and 500"),
            (4 <= opts.batch_size <= 4096, "the batch size must be between 4 and 4096"),
            (2 <= opts.samples_per_class <= opts.batch_size // 2, "samples per class: 2 … b/2"),
            (opts.min_positives >= 2, "at least 2 images per class are needed"),
            (0.0 < opts.heldout_fraction < 1.0, "the held-out fraction must be in (0, 1)"),
            (opts.lr is None or 0 < opts.lr < 1, "the learning rate must be in (0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message[0].upper() + message[1:] + ".")
        return opts

    def as_dict(self) -> dict:
        return asdict(self)
