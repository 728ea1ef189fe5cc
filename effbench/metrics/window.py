"""The measured window: every tracker starts and stops on the same edges.

Each repeat is one window; trackers keep one reading per repeat, so every
metric has samples (docs/spec.md §1).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from effbench.hardware import synchronize
from effbench.metrics.record import Metric
from effbench.turns import take_turn


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
        take_turn()  # under `effbench ab`: the other side's window runs first (effbench/turns.py)
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


@dataclass(frozen=True)
class WarmUp:
    runs: int
    settled: bool
    times_s: list[float]
    rel_tol: float
    last: int

    @property
    def note(self) -> str:
        tail = self.times_s[-self.last:]
        spread = max(abs(t - statistics.median(tail)) for t in tail) / statistics.median(tail)
        if self.settled:
            return (f"warm-up: {self.runs} runs, until the last {self.last} were within "
                    f"{self.rel_tol:.0%} of their median ({spread:.1%})")
        return (f"warm-up: not steady after {self.runs} runs (the last {self.last} spread {spread:.1%} "
                f"from their median, tolerance {self.rel_tol:.0%}): early repeats may still be outliers")


def warm_up(fn: Callable[[], object], min_runs: int = 1, max_runs: int = 10, rel_tol: float = 0.1, *,
            last: int = 3, device: torch.device | None = None) -> WarmUp:
    """Run `fn` until its timings settle: at least `min_runs` runs (and `last`), at most
    `max_runs`, stopping once the last `last` timings all lie within `rel_tol` of their
    median. One warm-up run leaves outliers (lazy initialisation, allocator growth,
    bitsandbytes' CPU repacking): say in the run's note how many it took, or that
    it never settled."""
    if not 1 <= min_runs <= max_runs or last < 2 or rel_tol <= 0:
        raise ValueError(f"warm_up needs 1 ≤ min_runs ≤ max_runs, last ≥ 2 and rel_tol > 0; got "
                         f"min_runs={min_runs}, max_runs={max_runs}, last={last}, rel_tol={rel_tol}")
    times: list[float] = []
    while len(times) < max_runs:
        if device is not None:
            synchronize(device)
        start = time.perf_counter()
        fn()
        if device is not None:
            synchronize(device)
        times.append(time.perf_counter() - start)
        if len(times) >= max(min_runs, last):
            tail = times[-last:]
            median = statistics.median(tail)
            if all(abs(t - median) <= rel_tol * median for t in tail):
                return WarmUp(len(times), True, times, rel_tol, last)
    return WarmUp(len(times), False, times, rel_tol, min(last, len(times)))
