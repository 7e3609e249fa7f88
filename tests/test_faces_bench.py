"""``bench faces`` runs end to end on a tiny configuration and reports the fixed keys
(DESIGN.md 7); the real figures come from the default run."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command

from training.benchmarks.faces import synthetic_frames


def test_synthetic_frames_have_the_asked_sizes():
    frames = synthetic_frames(4, [(320, 180), (480, 270)], 2, seed=1)
    assert [f.size for f in frames] == [(320, 180), (480, 270)] * 2
    assert all(f.mode == "RGB" for f in frames)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_bench_faces_smoke(capsys):
    call_command(
        "bench",
        "faces",
        "--json",
        "--frames",
        "4",
        "--chunk",
        "4",
        "--sizes",
        "480x270",
        "--max-faces",
        "2",
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("ours_fps", "baseline_fps", "ratio", "frames", "faces_detected", "device"):
        assert key in result, key
    assert result["name"] == "faces" and result["frames"] == 4
    assert result["faces_detected"] >= 4 and result["faces_stored"] >= 1
    assert result["baseline_faces_detected"] == result["faces_detected"]
    assert result["ours_fps"] > 0 and result["baseline_fps"] > 0
    assert result["ratio"] == pytest.approx(result["ours_fps"] / result["baseline_fps"], rel=1e-2)
