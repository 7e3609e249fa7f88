"""Fine-tuning mechanics: phases, frozen layers and batch norm, a pretrained start."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.config import TrainConfig
from training.networks import build_model, network_config
from training.synthetic import make_shapes_archive
from training.trainer import NullContext, plan_phases, set_train_mode, set_trainable, train


def test_phases_follow_the_thesis():
    config = TrainConfig()
    assert [(p.lr, p.trainable, p.epochs) for p in plan_phases(config, False)] == [
        (1e-3, "head", 20),
        (1e-4, "top", 40),
    ]
    # From scratch there is nothing to protect: every layer trains in both phases.
    assert {p.trainable for p in plan_phases(config, True)} == {"all"}
    assert len(plan_phases(TrainConfig(epochs_phase1=0), False)) == 1


def test_head_then_top_twenty_layers():
    model = build_model(network_config("efficientnet-b0", 3, image_size=64))
    set_trainable(model, "head")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("head.")}
    set_trainable(model, "top", 20)
    layers = model.backbone_layers()
    assert all(p.requires_grad for layer in layers[-20:] for p in layer.parameters())
    assert not any(p.requires_grad for layer in layers[:-20] for p in layer.parameters())
    assert model.backbone.net._conv_head.weight.requires_grad
    set_train_mode(model, "top")
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # ImageNet statistics stay
    assert model.head[0].training and model.head[1].training
    # One phase-2 step changes the top layers and nothing below them.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stem_stats = model.backbone.net._bn0.running_mean.clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(torch.randint(0, 255, (4, 3, 64, 64), dtype=torch.uint8)).sum()
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "backbone.net._conv_head.weight" in changed and "head.2.weight" in changed
    assert "backbone.net._conv_stem.weight" not in changed
    assert torch.equal(model.backbone.net._bn0.running_mean, stem_stats)
    set_train_mode(model, "all")
    assert all(m.training for m in bns)


def test_config_validation_and_aliases():
    config = TrainConfig.from_options(
        {
            "backbone": "efficientnet-b0",
            "batch_size": "8",
            "preset": "b",
            "amp": "false",
            "image_size": "",
        }
    )
    assert (config.network, config.batch_size, config.loss_preset, config.amp) == (
        "efficientnet-b0",
        8,
        "B",
        False,
    )
    assert config.image_size is None
    for bad in (
        {"network": "resnet"},
        {"batch_size": 2.5},
        {"init": "imagenet"},
        {"epochs_phase1": 0, "epochs_phase2": 0},
    ):
        with pytest.raises(ValueError):
            TrainConfig.from_options(bad)


def test_fine_tuning_from_local_weights(db, settings, tmp_path):
    """A pretrained start: the weights come from VIVA_WEIGHTS_DIR (no network), phase 1
    leaves the backbone untouched, and the run records where its weights came from."""
    from efficientnet_pytorch import EfficientNet

    settings.VIVA_WEIGHTS_DIR = tmp_path / "weights"
    settings.VIVA_MODELS_DIR = tmp_path / "models"
    settings.VIVA_ALLOW_WEIGHT_DOWNLOAD = False
    settings.VIVA_WEIGHTS_DIR.mkdir()
    imagenet = EfficientNet.from_name("efficientnet-b0").state_dict()
    torch.save(imagenet, settings.VIVA_WEIGHTS_DIR / "efficientnet-b0.pth")
    make_shapes_archive(8)
    ctx = NullContext()
    result = train(
        ctx,
        {
            "network": "efficientnet-b0",
            "image_size": 64,
            "batch_size": 8,
            "epochs_phase1": 1,
            "epochs_phase2": 1,
            "min_positives": 5,
            "num_workers": 0,
            "cpu_threads": 1,
        },
    )
    assert "efficientnet-b0.pth (local file)" in result["weights_source"]
    assert any("Phase 1 (head only)" in line for line in ctx.lines)
    assert any("top 20 layers" in line for line in ctx.lines)
    from training.models import ModelVersion
    from training.registry import models_root

    version = ModelVersion.objects.get(pk=result["model_version_id"])
    assert version.weights_source["source"] == "file"
    saved = torch.load(models_root() / version.weights_path, weights_only=True)
    # The stem is far below the top 20 layers: still exactly the ImageNet weights.
    assert torch.equal(saved["backbone.net._conv_stem.weight"], imagenet["_conv_stem.weight"])
    assert torch.equal(saved["backbone.net._bn0.running_mean"], imagenet["_bn0.running_mean"])
    assert [h["phase"][:7] for h in version.metrics["history"]] == ["phase 1", "phase 2"]
    assert set(ctx.metrics) >= {"train loss", "val mAP", "learning rate", "images/s"}
