"""Constants of concept training that the web pages need too — torch-free on purpose.

The web process (views, :mod:`training.services`, :mod:`training.queries`,
:mod:`training.config`, :mod:`training.registry`'s readers) imports only torch-free
modules; torch is loaded by the worker's training and inference code
(:mod:`training.losses`, :mod:`training.networks`, :mod:`training.dataset`,
:mod:`training.trainer`, :mod:`training.scoring`). ``tests/test_training_imports.py``
checks that importing the URLconf does not import torch. Keep it that way: put
anything a page reads here (or in another torch-free module such as
:mod:`training.network_specs` or :mod:`training.label_matrix`), never in a module that
imports torch at module level.

The names are re-exported where they used to live (``training.losses.POS``,
``training.losses.PRESETS``, ``training.dataset.DEFAULT_SEED``, ``training.weights.INITS``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# --- target codes per (image, concept); stored as int8 in label matrices and batches ------
POS = 1  # labelled positive
NEG = 0  # labelled negative
WEAK = 2  # not labelled for this concept, but positive for another one
IGNORE = -1  # neutral ("difficult") or unknown: contributes nothing

# --- the train/validation split (6.3.5; see training.label_matrix) ------------------------
DEFAULT_SEED = 20220101
VAL_POSITIVES = 30
VAL_NEGATIVE_FRACTION = 0.2
MAX_VAL_POSITIVE_FRACTION = 0.3

# --- where the starting weights come from (training.weights) ------------------------------
INITS = ("pretrained", "random")


# --- loss presets (section 6.3.5, Table 6.4; the loss itself is training.losses) ----------
@dataclass(frozen=True)
class LossPreset:
    """Loss weights of one approach of Table 6.4 (section 6.3.5).

    ``positive_images_only`` is part of approach A: it trains only on images with at least
    one positive label, i.e. the labelled negatives of review/feedback are not used as
    such (on an image that is positive for another concept they are weak negatives, which
    ``alpha_neg == alpha_weak`` reproduces).
    """

    name: str
    alpha_pos: float
    alpha_neg: float
    alpha_weak: float
    gamma: float = 2.0
    positive_images_only: bool = False
    description: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


# Section 6.3.5, "Three different approaches were evaluated" (mAP in Table 6.4).
PRESETS: dict[str, LossPreset] = {
    "A": LossPreset(
        "A",
        alpha_pos=0.8,
        alpha_neg=0.1,
        alpha_weak=0.1,
        positive_images_only=True,
        description="Positive images only; other concepts are weak negatives (mAP 71.11 %).",
    ),
    "B": LossPreset(
        "B",
        alpha_pos=0.8,
        alpha_neg=0.1,
        alpha_weak=0.1,
        description="All images; labelled negatives weighted as low as weak ones (78.31 %).",
    ),
    "C": LossPreset(
        "C",
        alpha_pos=0.8,
        alpha_neg=0.8,
        alpha_weak=0.2,
        description="Positives and labelled negatives equal, weak negatives low (79.88 %).",
    ),
}
DEFAULT_PRESET = "C"


def get_preset(name: str) -> LossPreset:
    try:
        return PRESETS[name.upper()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"Unknown loss preset {name!r}; choose one of {', '.join(PRESETS)}."
        ) from None
