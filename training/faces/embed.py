"""FaceNet embeddings: InceptionResnetV1 trained on VGGFace2 (thesis 6.3.3), 512-d and
L2-normalised, so cosine similarity is a dot product.

Weights are resolved like every other model of the project (DESIGN.md 6,
``training.weights``), because facenet-pytorch would otherwise download them on first
use — which fails in offline archives:

1. ``VIVA_WEIGHTS_DIR/facenet/20180402-114759-vggface2.pt`` (or the same name directly
   in ``VIVA_WEIGHTS_DIR``);
2. facenet-pytorch's own cache, ``$TORCH_HOME/checkpoints/20180402-114759-vggface2.pt``
   (where an earlier ``InceptionResnetV1(pretrained='vggface2')`` saved it);
3. a download into that cache, unless ``VIVA_ALLOW_WEIGHT_DOWNLOAD`` is false.

Random initialisation is used only when ``VIVA_FACE_ALLOW_RANDOM_WEIGHTS`` is true
(tests, demo). It is seeded, so every process computes the same (meaningless) embeddings
and stored vectors stay comparable; pages warn that recognition is meaningless then.

Resolving is torch-free (the web process asks :func:`embedder_source`); torch is imported
only to build and run the network, in the worker.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import numpy as np
from django.conf import settings

from viva.jobs import JobError

WEIGHTS_FILE = "20180402-114759-vggface2.pt"
WEIGHTS_URL = f"https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/{WEIGHTS_FILE}"
EMBED_BATCH = 32
RANDOM_SEED = 20180402


class FaceModelUnavailable(JobError):
    """No VGGFace2 weights and random initialisation not allowed; the message says what
    an administrator can do."""


def weights_dir() -> Path:
    return Path(getattr(settings, "VIVA_WEIGHTS_DIR", Path(settings.VAR_DIR) / "weights"))


def facenet_cache_dir() -> Path:
    """facenet-pytorch's cache: ``$TORCH_HOME/checkpoints`` (``$TORCH_HOME`` defaulting
    to ``$XDG_CACHE_HOME/torch``, that to ``~/.cache``) — its ``get_torch_home`` rule."""
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))
    return Path(home) / "checkpoints"


def local_weights() -> Path | None:
    """The first VGGFace2 weights file found locally (steps 1 and 2), or None."""
    folder = weights_dir()
    for path in (folder / "facenet" / WEIGHTS_FILE, folder / WEIGHTS_FILE):
        if path.is_file():
            return path
    cached = facenet_cache_dir() / WEIGHTS_FILE
    return cached if cached.is_file() else None


def random_allowed() -> bool:
    return bool(getattr(settings, "VIVA_FACE_ALLOW_RANDOM_WEIGHTS", False))


def embedder_source() -> str:
    """``"vggface2"`` (weights on this machine), ``"random"`` (none, but random
    initialisation is allowed: recognition is meaningless) or ``"missing"``."""
    if local_weights() is not None:
        return "vggface2"
    return "random" if random_allowed() else "missing"


def install_advice() -> str:
    """Where an administrator puts the weights (shown on pages and in job errors)."""
    return (
        f"put {WEIGHTS_FILE} (from {WEIGHTS_URL}) into {weights_dir() / 'facenet'} "
        f"(VIVA_WEIGHTS_DIR) or into {facenet_cache_dir()}"
    )


def resolve() -> tuple[str, Path | None]:
    """``(source, path)``: ``("vggface2", file)`` or ``("random", None)``; downloads when
    allowed and nothing is local. Raises :class:`FaceModelUnavailable`."""
    path = local_weights()
    if path is not None:
        return "vggface2", path
    from training.weights import download_allowed

    problem = "downloading is switched off (VIVA_ALLOW_WEIGHT_DOWNLOAD)"
    if download_allowed() and not random_allowed():
        dest = facenet_cache_dir() / WEIGHTS_FILE
        try:
            _download(WEIGHTS_URL, dest)
            return "vggface2", dest
        except Exception as exc:  # noqa: BLE001 - offline, DNS, TLS, timeouts …
            problem = f"downloading them failed ({type(exc).__name__}: {exc})"
    if random_allowed():
        return "random", None
    raise FaceModelUnavailable(
        f"No VGGFace2 face-recognition weights on this machine, and {problem}. To enable "
        f"face recognition, {install_advice()}."
    )


def _download(url: str, dest: Path) -> None:
    from training.weights import DOWNLOAD_TIMEOUT
    from training.weights import _download as fetch

    fetch(url, dest, timeout=DOWNLOAD_TIMEOUT)


class Embedder:
    """InceptionResnetV1 (classify=False) in eval mode on one device."""

    def __init__(self, device: str = "cpu"):
        import torch
        from facenet_pytorch import InceptionResnetV1

        self.source, path = resolve()
        self.device = torch.device(device)
        if path is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                model = InceptionResnetV1(pretrained=None, classify=False)
        else:
            model = InceptionResnetV1(pretrained=None, classify=False)
            _load(model, path)
        self.model = model.eval().to(self.device)
        self.lock = threading.Lock()

    def embed(self, crops: np.ndarray, batch_size: int = EMBED_BATCH) -> np.ndarray:
        """float32 (n, 512), L2-normalised, from uint8 RGB crops (n, 160, 160, 3)."""
        import torch
        from facenet_pytorch import fixed_image_standardization

        crops = np.asarray(crops)
        if len(crops) == 0:
            return np.zeros((0, 512), dtype=np.float32)
        out = []
        with self.lock, torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(crops[start : start + batch_size]))
                x = batch.to(self.device).permute(0, 3, 1, 2).float()
                out.append(self.model(fixed_image_standardization(x)).float().cpu().numpy())
        vectors = np.concatenate(out).astype(np.float32)
        # The network normalises already; again after float16 rounding would be storage's job.
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _load(model, path: Path) -> None:
    from training.weights import read_state_dict

    try:
        state = read_state_dict(path)
    except Exception as exc:  # noqa: BLE001 - WeightsUnavailable carries the reason
        raise FaceModelUnavailable(str(exc)) from exc
    # The released file includes the VGGFace2 classifier ("logits"); embeddings skip it.
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FaceModelUnavailable(
            f"The weights file {path} does not fit InceptionResnetV1: {exc}"
        ) from exc


@functools.lru_cache(maxsize=4)
def _cached(device: str, path: str, allow_random: bool) -> Embedder:
    return Embedder(device)


def get_embedder(device: str = "cpu") -> Embedder:
    """One embedder per device, weights file and setting per process (a weights file
    installed later is picked up by the next chunk, without restarting the worker)."""
    path = local_weights()
    return _cached(device, str(path or ""), random_allowed())
