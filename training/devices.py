"""Compute devices for training and the "one run per device" rule.

The devices listed are those of the machine that asks (the web server in the embedded
setup, where the worker runs beside it). On a cluster whose GPU workers are other
machines, ``VIVA_TRAIN_DEVICES`` (e.g. ``cuda:0,cuda:1,cpu``) names them instead; the
worker checks again when the job starts, so a device that vanished fails the job with a
clear message rather than training somewhere else.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.db.models import Q

from viva.models import Job

GPU_QUEUE = "gpu"
MIN_FREE_GIB = 3.0  # the original listed only GPUs with ≥ 3 GiB free


def normalize_device(device: str | None) -> str:
    """``"cuda"``/``"gpu"`` → ``"cuda:0"``; ``"auto"`` → the first GPU or ``"cpu"``."""
    value = (device or "auto").strip().lower()
    if value in {"gpu", "cuda"}:
        return "cuda:0"
    if value == "auto":
        return "cuda:0" if _cuda_count() > 0 else "cpu"
    return value


def device_name(device) -> str:
    """A human name for a torch device, as benchmarks and logs report it."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores)"


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken driver means "no GPU", not a crash
        return 0


def _gpu_info(index: int) -> dict:
    import torch

    info = {
        "id": f"cuda:{index}",
        "type": "cuda",
        "name": f"GPU {index}",
        "free_bytes": None,
        "total_bytes": None,
    }
    try:
        info["name"] = torch.cuda.get_device_name(index)
        free, total = torch.cuda.mem_get_info(index)
        info["free_bytes"], info["total_bytes"] = int(free), int(total)
    except Exception:  # noqa: BLE001 - listed without memory figures
        pass
    return info


def _cpu_info() -> dict:
    cores = os.cpu_count() or 1
    info = {
        "id": "cpu",
        "type": "cpu",
        "name": f"CPU ({cores} cores)",
        "free_bytes": None,
        "total_bytes": None,
    }
    try:
        import psutil

        memory = psutil.virtual_memory()
        info["free_bytes"], info["total_bytes"] = int(memory.available), int(memory.total)
    except Exception:  # noqa: BLE001 - psutil is optional
        pass
    return info


def _local_devices() -> list[dict]:
    return [_gpu_info(i) for i in range(_cuda_count())] + [_cpu_info()]


def list_devices(*, with_busy: bool = True) -> list[dict]:
    """``[{id, type, name, free_bytes, total_bytes, free_gib, low_memory, busy,
    busy_job_id}]``: each CUDA GPU, then the CPU."""
    local = {d["id"]: d for d in _local_devices()}
    configured = list(getattr(settings, "VIVA_TRAIN_DEVICES", []) or [])
    if configured:
        devices = [
            local.get(normalize_device(d))
            or {
                "id": normalize_device(d),
                "type": normalize_device(d).split(":")[0],
                "name": normalize_device(d),
                "free_bytes": None,
                "total_bytes": None,
            }
            for d in configured
        ]
    else:
        devices = list(local.values())
    for device in devices:
        free = device["free_bytes"]
        device["free_gib"] = round(free / 2**30, 1) if free is not None else None
        device["low_memory"] = bool(
            device["type"] == "cuda" and free is not None and free < MIN_FREE_GIB * 2**30
        )
        job = busy_job(device["id"]) if with_busy else None
        device["busy"] = job is not None
        device["busy_job_id"] = job.pk if job else None
    return devices


def device_exists(device: str) -> bool:
    return normalize_device(device) in {d["id"] for d in list_devices(with_busy=False)}


def local_device_exists(device: str) -> bool:
    """On this machine (what the worker checks before training)."""
    return normalize_device(device) in {d["id"] for d in _local_devices()}


def busy_job(device: str, *, exclude: int | None = None) -> Job | None:
    """The active job of the GPU queue that holds ``device``, if any."""
    device = normalize_device(device)
    jobs = Job.objects.filter(status__in=Job.ACTIVE, queue=GPU_QUEUE).filter(
        Q(device=device) | Q(params__device=device)
    )
    if exclude is not None:
        jobs = jobs.exclude(pk=exclude)
    return jobs.order_by("created_at").first()
