"""``manage.py bench training`` runs and prints the keys tools read (DESIGN.md 7)."""

from __future__ import annotations

import io
import json

from django.core.management import call_command


def test_bench_training_quick_run():
    out = io.StringIO()
    call_command(
        "bench",
        "training",
        "--json",
        "--model",
        "tiny-cnn",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--workers",
        "1",
        "--device",
        "cpu",
        stdout=out,
    )
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert {
        "ours_ips",
        "baseline_ips",
        "ratio",
        "device",
        "batch_size",
        "model",
        "image_size",
    } <= set(result)
    assert result["name"] == "training" and result["device"] == "cpu"
    assert result["ours_ips"] > 0 and result["baseline_ips"] > 0
    assert abs(result["ratio"] - result["ours_ips"] / result["baseline_ips"]) < 1e-2
