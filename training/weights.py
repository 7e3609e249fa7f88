"""Where the ImageNet weights a concept network starts from come from (DESIGN.md 6).

Archives are often offline, so weights are resolved in a documented order and the run
records which one it used:

1. a file in ``VIVA_WEIGHTS_DIR``: ``<name>.pth`` (e.g. ``efficientnet-b3.pth``) or the
   file name of the official release (``efficientnet-b3-5fb5a3c3.pth``);
2. the package's cache, torch hub's ``<hub dir>/checkpoints/<name>-*.pth`` (where
   ``EfficientNet.from_pretrained`` would have put an earlier download);
3. a download of efficientnet-pytorch's release file into that cache, unless
   ``VIVA_ALLOW_WEIGHT_DOWNLOAD`` is false. Offline this fails with a message that says
   where an administrator can put the file.

Random initialisation happens only when it is asked for (``init="random"``: tests, demo,
tiny networks). Files are read with ``torch.load(..., weights_only=True)``: a checkpoint
is data, never code.

Resolving (which file, or why none) is torch-free, so the web process can check before a
start whether a run could get its weights (:func:`training.services.check_start_weights`);
torch is imported only to read or load a checkpoint, in the worker.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from .constants import INITS
from .errors import TrainingError
from .network_specs import get_spec

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import torch

    from .networks import ConceptNet

__all__ = [
    "INITS",
    "RELEASE_URLS",
    "ResolvedWeights",
    "WeightsUnavailable",
    "download_allowed",
    "hub_checkpoint_dir",
    "load_pretrained",
    "read_state_dict",
    "release_urls",
    "resolve_weights",
]

DOWNLOAD_TIMEOUT = 60
_RELEASE = "https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0"
# efficientnet-pytorch's ``utils.url_map`` (that module imports torch, so it is copied;
# tests/test_training_weights.py checks the copy against the installed package).
RELEASE_URLS = {
    "efficientnet-b0": f"{_RELEASE}/efficientnet-b0-355c32eb.pth",
    "efficientnet-b1": f"{_RELEASE}/efficientnet-b1-f1951068.pth",
    "efficientnet-b2": f"{_RELEASE}/efficientnet-b2-8bb594d6.pth",
    "efficientnet-b3": f"{_RELEASE}/efficientnet-b3-5fb5a3c3.pth",
    "efficientnet-b4": f"{_RELEASE}/efficientnet-b4-6ed6700e.pth",
    "efficientnet-b5": f"{_RELEASE}/efficientnet-b5-b6417697.pth",
    "efficientnet-b6": f"{_RELEASE}/efficientnet-b6-c76e70fd.pth",
    "efficientnet-b7": f"{_RELEASE}/efficientnet-b7-dcc49843.pth",
}


class WeightsUnavailable(TrainingError):
    """No usable weights; the message tells an administrator what to do."""


@dataclass(frozen=True)
class ResolvedWeights:
    source: str  # "file" | "cache" | "download" | "random"
    name: str = ""  # weights family, e.g. "efficientnet-b3"
    path: str = ""
    url: str = ""

    def describe(self) -> str:
        where = {
            "file": "local file",
            "cache": "torch hub cache",
            "download": "downloaded",
        }
        if self.source == "random":
            return "random initialisation (no pretrained weights)"
        return f"ImageNet weights {self.name} from {self.path} ({where[self.source]})"

    def as_dict(self) -> dict:
        return {**asdict(self), "description": self.describe()}


def release_urls() -> dict[str, str]:
    return dict(RELEASE_URLS)


def hub_checkpoint_dir() -> Path:
    """torch hub's ``<hub dir>/checkpoints``, without importing torch in the web process:
    ``torch.hub.get_dir()`` when torch is loaded already (it honours ``set_dir``), else
    the same rule from the environment (``$TORCH_HOME/hub``, ``$TORCH_HOME`` defaulting to
    ``$XDG_CACHE_HOME/torch``, that to ``~/.cache``)."""
    if "torch" in sys.modules:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints"
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))
    return Path(home) / "hub" / "checkpoints"


def _weights_dir() -> Path:
    return Path(getattr(settings, "VIVA_WEIGHTS_DIR", Path(settings.VAR_DIR) / "weights"))


def download_allowed() -> bool:
    """``VIVA_ALLOW_WEIGHT_DOWNLOAD`` (default: true)."""
    return bool(getattr(settings, "VIVA_ALLOW_WEIGHT_DOWNLOAD", True))


def _local_candidates(name: str, folder: Path, url: str) -> list[Path]:
    names = [f"{name}.pth", f"{name}.pt"]
    if url:
        names.append(url.rsplit("/", 1)[-1])
    found = [folder / n for n in names if (folder / n).is_file()]
    found += sorted(p for p in folder.glob(f"{name}-*.pth") if p.is_file() and p not in found)
    return found


def _cache_candidates(name: str, folder: Path, url: str) -> list[Path]:
    exact = folder / url.rsplit("/", 1)[-1] if url else None
    found = [exact] if exact is not None and exact.is_file() else []
    # "efficientnet-b3-<hash>.pth", not "efficientnet-b3x…"; adv- files are other weights
    pattern = re.compile(rf"^{re.escape(name)}-[0-9a-f]{{6,}}\.pth$")
    found += sorted(
        p for p in folder.glob(f"{name}-*.pth") if pattern.match(p.name) and p not in found
    )
    return found


def resolve_weights(
    network: str,
    init: str = "pretrained",
    *,
    weights_dir: Path | None = None,
    cache_dir: Path | None = None,
    allow_download: bool | None = None,
) -> ResolvedWeights:
    """Find (or fetch) the starting weights of ``network``; see the module docstring."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, not {init!r}")
    if init == "random":
        return ResolvedWeights("random")
    spec = get_spec(network)
    if spec.pretrained is None:
        raise WeightsUnavailable(
            f"The network {network} has no pretrained weights; train it with random "
            "initialisation (init = random)."
        )
    name = spec.pretrained
    url = release_urls().get(name, "")
    folder = Path(weights_dir) if weights_dir is not None else _weights_dir()
    cache = Path(cache_dir) if cache_dir is not None else hub_checkpoint_dir()
    for path in _local_candidates(name, folder, url):
        return ResolvedWeights("file", name, str(path))
    for path in _cache_candidates(name, cache, url):
        return ResolvedWeights("cache", name, str(path))
    allowed = download_allowed() if allow_download is None else allow_download
    advice = (
        f"Put the file {url.rsplit('/', 1)[-1] if url else name + '.pth'} "
        f"(from {url or 'the efficientnet-pytorch releases'}) into {folder} "
        f"(VIVA_WEIGHTS_DIR) as {name}.pth, or into {cache}; or start the training with "
        "random initialisation (much worse results)."
    )
    if not allowed or not url:
        raise WeightsUnavailable(
            f"No ImageNet weights for {name} on this machine and downloading is switched "
            f"off (VIVA_ALLOW_WEIGHT_DOWNLOAD). {advice}"
        )
    dest = cache / url.rsplit("/", 1)[-1]
    try:
        _download(url, dest)
    except Exception as exc:  # noqa: BLE001 - offline, DNS, TLS, timeouts, bad hash …
        raise WeightsUnavailable(
            f"No ImageNet weights for {name} on this machine, and downloading them failed "
            f"({type(exc).__name__}: {exc}). {advice}"
        ) from exc
    return ResolvedWeights("download", name, str(dest), url)


def _download(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT) -> None:
    """Fetch ``url`` into ``dest`` atomically; check the hash prefix in its file name
    (``name-<sha256 prefix>.pth``, torch hub's convention)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    match = re.search(r"-([0-9a-f]{8,})\.pth$", dest.name)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while block := resp.read(1 << 20):
                digest.update(block)
                out.write(block)
        if match and not digest.hexdigest().startswith(match.group(1)):
            raise WeightsUnavailable(f"the downloaded file's checksum does not match {url}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint as a plain state dict (safe loader only)."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated, pickled code …
        raise WeightsUnavailable(
            f"The weights file {path} cannot be read safely ({type(exc).__name__}: {exc})."
        ) from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise WeightsUnavailable(f"The weights file {path} does not hold a state dict.")
    return {k.removeprefix("module."): v for k, v in data.items()}


def load_pretrained(model: ConceptNet, resolved: ResolvedWeights) -> None:
    """Copy ImageNet weights into the backbone (the classifier ``_fc`` is dropped: the
    concept head is new)."""
    if resolved.source == "random":
        return
    state = {k: v for k, v in read_state_dict(resolved.path).items() if not k.startswith("_fc.")}
    target = getattr(model.backbone, "net", model.backbone)
    try:
        result = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: weights of another variant
        raise WeightsUnavailable(
            f"The weights file {resolved.path} does not fit {resolved.name}: {exc}"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise WeightsUnavailable(
            f"The weights file {resolved.path} does not fit {resolved.name}: "
            f"{len(result.missing_keys)} missing and {len(result.unexpected_keys)} "
            f"unexpected tensors (e.g. {(result.missing_keys or result.unexpected_keys)[:3]})."
        )
