"""Resolution order of pretrained weights (DESIGN.md 6) and safe loading; no network."""

from __future__ import annotations

import sys
import urllib.error

import pytest
import torch

from training import weights
from training.networks import build_model, network_config
from training.weights import (
    WeightsUnavailable,
    load_pretrained,
    read_state_dict,
    resolve_weights,
)

B0_RELEASE = "efficientnet-b0-355c32eb.pth"


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    local, cache = tmp_path / "weights", tmp_path / "hub" / "checkpoints"
    local.mkdir()
    cache.mkdir(parents=True)
    calls = []

    def fake_download(url, dest, timeout=60):
        calls.append((url, dest))
        torch.save({"x": torch.zeros(1)}, dest)

    monkeypatch.setattr(weights, "_download", fake_download)
    monkeypatch.setattr(weights, "hub_checkpoint_dir", lambda: cache)
    return local, cache, calls


def _b0_state() -> dict:
    from efficientnet_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-b0").state_dict()


def test_release_urls_are_the_packages():
    """The copy that keeps ``training.weights`` torch-free matches efficientnet-pytorch."""
    from efficientnet_pytorch.utils import url_map

    assert weights.release_urls() == dict(url_map)


def test_hub_dir_without_torch_follows_torch_rule(monkeypatch, tmp_path):
    """The web process (no torch loaded) looks into the cache the worker uses."""
    for env in ({"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "x")}):
        monkeypatch.delenv("TORCH_HOME", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        expected = weights.hub_checkpoint_dir()  # torch is loaded here: torch.hub.get_dir()
        with monkeypatch.context() as m:
            m.delitem(sys.modules, "torch")
            assert weights.hub_checkpoint_dir() == expected
        assert expected.parent.parent in (tmp_path / "th", tmp_path / "x" / "torch")


def test_local_file_comes_first(dirs):
    local, cache, calls = dirs
    (cache / B0_RELEASE).write_bytes(b"cached")
    (local / "efficientnet-b0.pth").write_bytes(b"local")
    found = resolve_weights("efficientnet-b0", weights_dir=local, cache_dir=cache)
    assert (found.source, found.path) == ("file", str(local / "efficientnet-b0.pth"))
    assert "local file" in found.describe()
    assert not calls


def test_release_file_name_in_the_weights_dir_counts_too(dirs):
    local, cache, _ = dirs
    (local / B0_RELEASE).write_bytes(b"local")
    assert resolve_weights("efficientnet-b0", weights_dir=local, cache_dir=cache).source == "file"


def test_cache_before_download(dirs):
    local, cache, calls = dirs
    (cache / "efficientnet-b0-0123abcd.pth").write_bytes(b"cached")
    (cache / "efficientnet-b0x-0123abcd.pth").write_bytes(b"other model")
    (cache / "adv-efficientnet-b0-b64d5a18.pth").write_bytes(b"advprop weights")
    found = resolve_weights("efficientnet-b0", weights_dir=local, cache_dir=cache)
    assert (found.source, found.path) == ("cache", str(cache / "efficientnet-b0-0123abcd.pth"))
    assert not calls


def test_download_last_into_the_cache(dirs):
    local, cache, calls = dirs
    found = resolve_weights(
        "efficientnet-b0", weights_dir=local, cache_dir=cache, allow_download=True
    )
    assert found.source == "download"
    assert calls and calls[0][0].endswith(B0_RELEASE) and calls[0][1] == cache / B0_RELEASE
    # The next run finds the downloaded file in the cache.
    again = resolve_weights("efficientnet-b0", weights_dir=local, cache_dir=cache)
    assert again.source == "cache" and len(calls) == 1


def test_download_switched_off_says_where_to_put_the_file(dirs):
    local, cache, calls = dirs
    with pytest.raises(WeightsUnavailable) as info:
        resolve_weights("efficientnet-b3", weights_dir=local, cache_dir=cache, allow_download=False)
    message = str(info.value)
    assert str(local) in message and "efficientnet-b3.pth" in message
    assert "efficientnet-b3-5fb5a3c3.pth" in message and "random" in message
    assert not calls


def test_download_failure_offline_is_a_clear_error(dirs, monkeypatch):
    local, cache, _ = dirs

    def offline(url, dest, timeout=60):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(weights, "_download", offline)
    with pytest.raises(WeightsUnavailable) as info:
        resolve_weights("efficientnet-b3", weights_dir=local, cache_dir=cache, allow_download=True)
    assert "downloading them failed" in str(info.value)
    assert "VIVA_WEIGHTS_DIR" in str(info.value)


def test_settings_decide_folder_and_download(dirs, settings):
    local, cache, calls = dirs
    settings.VIVA_WEIGHTS_DIR = local
    settings.VIVA_ALLOW_WEIGHT_DOWNLOAD = False
    (local / "efficientnet-b1.pth").write_bytes(b"x")
    assert resolve_weights("efficientnet-b1").source == "file"
    with pytest.raises(WeightsUnavailable):
        resolve_weights("efficientnet-b2")
    assert not calls


def test_random_only_when_asked_for(dirs):
    local, cache, calls = dirs
    assert resolve_weights("efficientnet-b3", "random").source == "random"
    assert not calls
    with pytest.raises(WeightsUnavailable, match="random"):
        resolve_weights("tiny-cnn", "pretrained", weights_dir=local, cache_dir=cache)
    with pytest.raises(ValueError):
        resolve_weights("efficientnet-b0", "imagenet21k")


def test_load_pretrained_copies_the_backbone_and_drops_the_classifier(dirs):
    local, cache, _ = dirs
    state = _b0_state()
    torch.save(state, local / "efficientnet-b0.pth")
    model = build_model(network_config("efficientnet-b0", 4, image_size=64))
    resolved = resolve_weights("efficientnet-b0", weights_dir=local, cache_dir=cache)
    load_pretrained(model, resolved)
    loaded = model.backbone.net.state_dict()
    assert torch.equal(loaded["_conv_stem.weight"], state["_conv_stem.weight"])
    assert torch.equal(
        loaded["_blocks.15._project_conv.weight"], state["_blocks.15._project_conv.weight"]
    )
    assert model.head[-1].out_features == 4  # the new head, not ImageNet's 1000 classes


def test_wrong_variant_is_refused(dirs):
    local, cache, _ = dirs
    torch.save(_b0_state(), local / "efficientnet-b1.pth")
    model = build_model(network_config("efficientnet-b1", 2, image_size=64))
    resolved = resolve_weights("efficientnet-b1", weights_dir=local, cache_dir=cache)
    with pytest.raises(WeightsUnavailable, match="does not fit"):
        load_pretrained(model, resolved)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_only_plain_tensors_are_loaded(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "x": _Payload()}, path)
    with pytest.raises(WeightsUnavailable, match="cannot be read safely"):
        read_state_dict(path)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module.a": torch.ones(2)}}, wrapped)
    assert list(read_state_dict(wrapped)) == ["a"]
