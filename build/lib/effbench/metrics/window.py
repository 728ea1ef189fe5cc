"""The measured window: every tracker starts and stops on the same edges.

Each repeat is one window; trackers keep one reading per repeat, so every
metric has samples (SPEC §1).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Protocol

import torch

from effbench.hardware import synchronize
from effbench.metrics.record import Metric


class Tracker(Protocol):
    def begin(self) -> None:
        """Called right after the window's opening synchronize."""

    def end(self, elapsed_s: float) -> None:
        """Called right after the closing synchronize, with the window's wall time."""

    def metrics(self) -> list[Metric]:
        """Figures over all windows measured so far."""


class MeasuredWindow:
    def __init__(self, trackers: list[Tracker], device: torch.device):
        self.trackers = trackers
        self.device = device
        self.elapsed_s: list[float] = []

    @contextmanager
    def measure(self):
        synchronize(self.device)
        for t in self.trackers:
            t.begin()
        start = time.perf_counter()
        try:
            yield
        finally:
            # Trackers stop even when the workload raised, so no sampling thread
            # outlives a failed run; the caller records the failure.
            synchronize(self.device)
            elapsed = time.perf_counter() - start
            # Reverse order: outer trackers (energy, sampling threads) bracket inner ones.
            for t in reversed(self.trackers):
                t.end(elapsed)
        self.elapsed_s.append(elapsed)

    def metrics(self) -> list[Metric]:
        return [m for t in self.trackers for m in t.metrics()]
