"""CPU/GPU utilisation sampled in the background for the training page's charts.

The sampler thread only collects numbers; the training loop drains them into the job's
metric series (``ctx.metric``) from its own thread, because the job context writes to
the database and raises ``JobCancelled`` — neither belongs in a helper thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque

SERIES_WINDOW = 900  # points kept per utilisation series: 30 minutes at one per 2 s


class UtilisationMonitor(threading.Thread):
    def __init__(self, device: str = "cpu", interval: float = 2.0):
        super().__init__(daemon=True, name="training-utilisation")
        self.device = device
        self.interval = interval
        self.samples: deque[tuple[str, float, float]] = deque(maxlen=10_000)
        self.stop_event = threading.Event()
        self.started_at = time.monotonic()
        self._psutil = None
        self._gpu_util_ok = device.startswith("cuda")
        try:
            import psutil

            psutil.cpu_percent(None)  # the first reading is meaningless: prime it
            self._psutil = psutil
        except Exception:  # noqa: BLE001 - psutil is optional
            self._psutil = None

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        t = round(time.monotonic() - self.started_at, 1)
        if self._psutil is not None:
            self.samples.append(("cpu %", t, float(self._psutil.cpu_percent(None))))
            self.samples.append(("ram %", t, float(self._psutil.virtual_memory().percent)))
        if self.device.startswith("cuda"):
            import torch

            index = torch.device(self.device).index or 0
            if self._gpu_util_ok:
                try:  # needs NVML (pynvml / nvidia-ml-py); optional
                    self.samples.append(("gpu %", t, float(torch.cuda.utilization(index))))
                except Exception:  # noqa: BLE001
                    self._gpu_util_ok = False
            try:
                free, total = torch.cuda.mem_get_info(index)
                self.samples.append(("gpu memory %", t, 100.0 * (total - free) / total))
            except Exception:  # noqa: BLE001
                pass

    def drain(self, ctx) -> None:
        """Move collected samples into the job's series, keeping a rolling window."""
        while self.samples:
            name, t, value = self.samples.popleft()
            ctx.metric(name, t, value)
            series = getattr(ctx, "metrics", {}).get(name)
            if series is not None and len(series) > SERIES_WINDOW:
                del series[:-SERIES_WINDOW]

    def stop(self) -> None:
        """Stop sampling; one last reading so even a run shorter than the interval
        has a point on the utilisation chart."""
        self.stop_event.set()
        self.sample()
