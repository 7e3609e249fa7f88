"""The web process must not import torch (≈ 6 s and hundreds of MB per process): only the
worker's training and inference code does. Checked in a fresh interpreter, because the
test process itself has imported torch long before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What a web process loads: the URLconf (every view), the job kinds (start_job looks
# them up) and the torch-free training modules the pages and services use.
PROBE = """
import json, sys
import django
django.setup()
import viva.urls
from viva.jobs.registry import all_kinds
all_kinds()
import training.config, training.constants, training.job_handlers, training.label_matrix
import training.network_specs, training.queries, training.registry, training.services
import training.weights
heavy = ("torch", "torchvision", "efficientnet_pytorch", "sklearn")
print(json.dumps({
    "loaded": sorted(m for m in heavy if m in sys.modules),
    "training": sorted(m for m in sys.modules if m.startswith("training")),
}))
"""


def test_web_process_does_not_import_torch():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "viva.settings_test"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], (
        f"importing the web side loaded {report['loaded']}; training modules loaded: "
        f"{report['training']}"
    )
    assert "training.views.train" in report["training"]
    for torch_module in ("training.losses", "training.networks", "training.dataset"):
        assert torch_module not in report["training"]
