"""Compute family (docs/spec.md §2): counted FLOPs, MFU against a peak, PCU."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import torch

from effbench.hardware import cpu_cores
from effbench.metrics.catalog import from_samples, make_metric
from effbench.metrics.nvml import NvmlDevice
from effbench.metrics.peaks import NoTheoreticalPeak, Peak, achievable_peak, theoretical_peak
from effbench.metrics.record import Metric, Source
from effbench.metrics.sampler import PollingSampler


# Without the model's shapes, the achievable peak times one square linear layer.
DEFAULT_SHAPES = ((1024, 1024),)
DEFAULT_TOKENS = 1024


def mfu_peak(device: torch.device, dtype: torch.dtype, achievable: Peak, cpu_max_ghz: float | None = None) -> Peak:
    """The theoretical peak; where none is known, the achievable one stands in and says so."""
    try:
        return theoretical_peak(device, dtype, cpu_max_ghz)
    except NoTheoreticalPeak as e:
        return Peak(achievable.flops_per_s, achievable.source,
                    f"no theoretical peak ({e}); the achievable peak stands in: {achievable.note}")


def _thread_clock(tid: int) -> int:
    """Linux's CPU-time clock id of any thread of this process (CPUCLOCK_SCHED | PERTHREAD)."""
    return ((~tid) << 3) | 6


_PROCESS = -1  # the key of the process clock's reading where there are no thread clocks


def threads_cpu_s() -> dict[int, float]:
    """CPU seconds of each thread of this process, each read exactly; where the kernel
    offers no per-thread clocks (not Linux), the process clock as one entry.

    Why not time.process_time() everywhere: the process clock adds up its threads' runtimes,
    and the kernel brings a thread running on another core up to date only at its scheduler
    ticks, so a 20 ms window of two busy threads read PCU 110% and more. A thread's own
    clock is brought up to date when it is read."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return {_PROCESS: time.process_time()}
    out = {}
    for tid in tids:
        try:
            out[tid] = time.clock_gettime(_thread_clock(tid))
        except OSError:  # the thread ended in between
            pass
    return out


def cpu_seconds_between(start: dict[int, float], end: dict[int, float]) -> float:
    """CPU time the threads spent between two readings; a thread born in between counts
    from 0, one that ended in between is missed (an undercount, never an overcount)."""
    return sum(t - start.get(tid, 0.0) for tid, t in end.items())


class ComputeTracker:
    """PCU per window, and MFU from FLOPs counted once for the window's workload
    (flops_per_window None: a workload whose FLOPs vary per window, PCU only).

    MFU is measured against the theoretical peak (`cpu_max_ghz` pins a CPU's max clock), and
    `compute.mfu_achievable` against the achievable peak of `linear_shapes` ((in_features,
    out_features) of the model's linear layers) over `tokens` rows; without shapes, a 1024→1024
    linear over 1024 rows."""

    def __init__(self, device: torch.device, dtype: torch.dtype, flops_per_window: int | None = None,
                 flops_analytic: float | None = None, analytic_rule: str = "2·N·tokens",
                 linear_shapes: Sequence[tuple[int, int]] | None = None, tokens: int | None = None,
                 cpu_max_ghz: float | None = None, flops_note: str = "torch.utils.flop_counter, one window"):
        self.device = device
        self.flops = flops_per_window
        self.flops_note = flops_note
        self.flops_analytic = flops_analytic
        self.analytic_rule = analytic_rule
        self.achievable = self.peak = None
        if flops_per_window is not None:
            shapes_note = "" if linear_shapes else "no model shapes given: "
            achievable = achievable_peak(device, dtype, linear_shapes or DEFAULT_SHAPES, tokens or DEFAULT_TOKENS)
            self.achievable = Peak(achievable.flops_per_s, achievable.source, shapes_note + achievable.note)
            self.peak = mfu_peak(device, dtype, self.achievable, cpu_max_ghz)
        self._nvml = NvmlDevice.open(device)
        self._sampler = PollingSampler({"util": self._nvml.utilization}, 0.02) if self._nvml else None
        self._cores = cpu_cores()
        self._wall0 = 0.0
        self._cpu0: dict[int, float] = {}
        self.pcu: list[float] = []
        self.achieved: list[float] = []

    def begin(self) -> None:
        if self._sampler:
            self._sampler.start()
        # Wall clock first at the start and last at the end: the CPU-time interval lies inside the
        # wall interval, so CPU time ≤ wall × cores holds to the clocks' nanosecond resolution.
        self._wall0 = time.perf_counter()
        self._cpu0 = threads_cpu_s()

    def end(self, elapsed_s: float) -> None:
        cpu_s = cpu_seconds_between(self._cpu0, threads_cpu_s())
        wall_s = time.perf_counter() - self._wall0
        if self._sampler:
            self._sampler.stop()
            self.pcu.append(self._sampler.time_mean("util") / 100.0)
        else:
            self.pcu.append(cpu_s / (wall_s * self._cores))
        if self.flops is not None:
            self.achieved.append(self.flops / elapsed_s)

    def metrics(self) -> list[Metric]:
        pcu_how = ("NVML utilization.gpu sampled every 20 ms" if self._sampler
                   else f"CPU time of the process's threads (each thread's own clock, read exactly; "
                        f"time.process_time where there is none) / (wall time × {self._cores} cores available), "
                        "both read at the window's edges")
        pcu_src = Source.SAMPLED if self._sampler else Source.TIMER
        pcu = from_samples("compute.pcu", self.pcu, pcu_src, pcu_how)
        if self.flops is None:
            return [pcu]
        peak, achievable = self.peak, self.achievable
        return [
            make_metric("compute.flops", self.flops, Source.ANALYTIC, note=self.flops_note),
            make_metric("compute.flops_analytic", self.flops_analytic, Source.ANALYTIC, note=self.analytic_rule),
            make_metric("compute.peak_flops_per_s", peak.flops_per_s, peak.source, note=peak.note),
            make_metric("compute.achievable_peak_flops_per_s", achievable.flops_per_s, achievable.source,
                        note=achievable.note),
            from_samples("compute.achieved_flops_per_s", self.achieved, Source.TIMER, "counted FLOPs / window time"),
            from_samples("compute.mfu", [a / peak.flops_per_s for a in self.achieved], Source.TIMER,
                         f"achieved / peak ({peak.note})"),
            from_samples("compute.mfu_achievable", [a / achievable.flops_per_s for a in self.achieved], Source.TIMER,
                         f"achieved / achievable peak ({achievable.note})"),
            pcu,
        ]
