"""The one preprocessing definition of a concept model, stored in its config.

The original VIVA fed training and inference differently scaled pixels (0–255 vs 0–1;
REFERENCE.md "Defects"). Here a model's config carries its preprocessing and both sides
use this class: the *geometry* (decode, resize) happens on the CPU and yields uint8
tensors — four times less data between DataLoader workers and the main process than
float32 — and the *normalisation* (mean/std) is a fixed part of the network
(:class:`training.networks.ConceptNet` takes 0–255 input), so a saved model cannot be
fed wrongly scaled pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("squash",)


@dataclass(frozen=True)
class Preprocessing:
    """Decode → RGB → resize to ``image_size`` × ``image_size`` ("squash": the whole frame
    is kept, aspect ratio is not — a concept may sit at the edge of a 16:9 keyframe, and
    a centre crop would cut it away) → uint8 CHW tensor. ``mean``/``std`` are on the 0–1
    scale like torchvision's and are applied inside the network."""

    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "squash"
    resample: str = "bilinear"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 16 <= int(self.image_size) <= 2048:
            raise ValueError(f"image size {self.image_size} is out of range (16–2048)")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize!r}")

    # --- (de)serialisation: the config.json of a model version -------------------------
    def as_dict(self) -> dict:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        known = {k: data[k] for k in ("image_size", "resize", "resample", "extra") if k in data}
        if "mean" in data:
            known["mean"] = tuple(float(v) for v in data["mean"])
        if "std" in data:
            known["std"] = tuple(float(v) for v in data["std"])
        return cls(**known)

    # --- the inference path (training adds augmentation on top, see dataset.py) -----------
    @property
    def pil_resample(self) -> int:
        return {
            "bilinear": PILImage.Resampling.BILINEAR,
            "bicubic": PILImage.Resampling.BICUBIC,
        }[self.resample]

    def open(self, path: str | Path) -> PILImage.Image:
        """Decode as RGB; JPEG ``draft`` lets libjpeg decode large files at a reduced scale
        (never below the target size), which is most of the decoding cost."""
        img = PILImage.open(path)
        try:
            if img.format == "JPEG":
                img.draft("RGB", (self.image_size, self.image_size))
            if img.mode != "RGB":
                converted = img.convert("RGB")
                img.close()
                return converted
            img.load()
        except BaseException:
            img.close()
            raise
        return img

    def resize_image(self, img: PILImage.Image, box: tuple[float, ...] | None = None):
        size = (self.image_size, self.image_size)
        return img.resize(size, self.pil_resample, box=box, reducing_gap=3.0)

    def load(self, path: str | Path) -> torch.Tensor:
        """The model input for one file: uint8 tensor (3, S, S)."""
        with self.open(path) as img:
            return to_uint8_tensor(self.resize_image(img))


def to_uint8_tensor(img: PILImage.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
