"""A polling thread that reads a few probes at a fixed interval (docs/spec.md: ≤ 50 ms)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np


class PollingSampler:
    def __init__(self, probes: dict[str, Callable[[], float]], interval_s: float = 0.01):
        self.probes = probes
        self.interval_s = interval_s
        self.times: list[float] = []
        self.values: dict[str, list[float]] = {k: [] for k in probes}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        self.times.append(time.perf_counter())
        for k, probe in self.probes.items():
            self.values[k].append(float(probe()))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._poll()

    def start(self) -> None:
        self.times.clear()
        for v in self.values.values():
            v.clear()
        self._stop.clear()
        self._poll()  # a reading at the window's start, however short the window
        self._thread = threading.Thread(target=self._loop, name="effbench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._poll()  # and one at its end

    def peak(self, key: str) -> float:
        return max(self.values[key])

    def time_mean(self, key: str) -> float:
        """Trapezoidal time-average: (1/T)∫v(t)dt, robust to uneven polling."""
        t, v = np.asarray(self.times), np.asarray(self.values[key])
        if t[-1] - t[0] <= 0:
            return float(v.mean())
        return float(np.trapezoid(v, t) / (t[-1] - t[0]))
