"""Compute devices for training and the one-run-per-device rule."""

from __future__ import annotations

from training import devices
from training.devices import busy_job, device_exists, list_devices, normalize_device
from viva.models import Job


def test_cpu_is_always_listed(db):
    listed = list_devices()
    cpu = listed[-1]
    assert cpu["id"] == "cpu" and cpu["type"] == "cpu" and "cores" in cpu["name"]
    assert cpu["busy"] is False and cpu["busy_job_id"] is None
    assert all(d["type"] == "cuda" for d in listed[:-1])
    assert device_exists("cpu") and not device_exists("cuda:9")


def test_gpus_with_name_and_free_memory(db, monkeypatch):
    monkeypatch.setattr(devices, "_cuda_count", lambda: 2)
    monkeypatch.setattr(
        devices,
        "_gpu_info",
        lambda i: {
            "id": f"cuda:{i}",
            "type": "cuda",
            "name": f"Fake GPU {i}",
            "free_bytes": (10 - 8 * i) * 2**30,
            "total_bytes": 16 * 2**30,
        },
    )
    listed = list_devices()
    assert [d["id"] for d in listed] == ["cuda:0", "cuda:1", "cpu"]
    assert listed[0]["free_gib"] == 10.0 and not listed[0]["low_memory"]
    assert listed[1]["low_memory"]  # under 3 GiB free, as the original warned
    assert normalize_device("gpu") == normalize_device("auto") == "cuda:0"


def test_busy_while_an_active_gpu_job_holds_the_device(db):
    running = Job.objects.create(kind="train_concepts", queue="gpu", status="running", device="cpu")
    Job.objects.create(kind="train_concepts", queue="gpu", status="succeeded", device="cpu")
    assert busy_job("cpu") == running
    assert busy_job("cpu", exclude=running.pk) is None
    cpu = list_devices()[-1]
    assert cpu["busy"] and cpu["busy_job_id"] == running.pk
    running.status = "failed"
    running.save()
    queued = Job.objects.create(kind="train_concepts", queue="gpu", params={"device": "cpu"})
    assert busy_job("cpu") == queued  # queued, device only in its parameters yet


def test_configured_devices_for_remote_gpu_workers(db, settings):
    settings.VIVA_TRAIN_DEVICES = ["cuda:1", "cpu"]
    listed = list_devices()
    assert [d["id"] for d in listed] == ["cuda:1", "cpu"]
    assert device_exists("cuda:1")
