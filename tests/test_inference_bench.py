"""``bench inference`` runs end to end on a tiny configuration and reports the fixed keys
(DESIGN.md 7); the real figures come from the default EfficientNet-B0 run."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_bench_inference_smoke(capsys):
    call_command(
        "bench",
        "inference",
        "--json",
        "--model",
        "tiny-cnn",
        "--image-size",
        "64",
        "--chunk",
        "32",
        "--chunks",
        "1",
        "--workers",
        "0",
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("ours_ips", "baseline_ips", "ratio", "device", "model", "batch_size"):
        assert key in result, key
    assert result["name"] == "inference" and result["ours_ips"] > 0
    assert result["ratio"] == pytest.approx(result["ours_ips"] / result["baseline_ips"], rel=1e-2)
    assert result["predictions_written"] > 0
