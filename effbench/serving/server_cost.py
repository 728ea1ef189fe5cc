"""What the server costs over the load window, when it runs on this host.

A tracker for metrics.window.MeasuredWindow (begin / end / metrics), sampling
with a PollingSampler:

- the server's whole process tree (its pid and every descendant): RSS summed
  over the processes (`sampled`; pages shared between processes count once per
  process), and CPU time from each process's kernel CPU clock
  (clock_getcpuclockid: nanoseconds, all threads, `timer`);
- the GPUs it runs on (NVML indices): power and utilization sampled, device
  memory used, and energy from NVML's total-energy counter (`counter`), or
  sampled power × time where the counter is missing or the window too short.

A remote server (no pid) gets "not measured" markers, never a guess.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import time
from collections.abc import Callable

import numpy as np
import psutil

from effbench.hardware import cpu_cores
from effbench.metrics.catalog import from_samples
from effbench.metrics.nvml import NvmlDevice
from effbench.metrics.record import Metric, Source
from effbench.metrics.sampler import PollingSampler

_NVML_COUNTER_MIN_WINDOW_S = 1.0  # the energy counter updates about every 100 ms: ≥ 10 updates per window

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def process_cpu_seconds(pid: int) -> float:
    """CPU time of a process (all its threads, live and exited) from its kernel CPU clock."""
    clock = ctypes.c_int()
    if _libc.clock_getcpuclockid(pid, ctypes.byref(clock)) != 0:
        raise ProcessLookupError(pid)
    return time.clock_gettime(clock.value)


class ProcessTree:
    """A process and its descendants, read together once per poll. Membership
    is refreshed every `refresh_s` (finding descendants scans every process on
    the host, ~7 ms here), the known processes are read at every poll. CPU time
    of the window: per process, the last reading minus the first (0 for one
    born in the window); a process that ends in the window keeps its last reading."""

    def __init__(self, pid: int, refresh_s: float = 1.0):
        self.pid, self.refresh_s = pid, refresh_s
        self.root = psutil.Process(pid)
        self.rss = 0.0
        self.seen: set[int] = set()
        self._procs: list[psutil.Process] = []
        self._refreshed = -math.inf
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._window_start = 0.0

    def reset(self) -> None:
        self._first.clear()
        self._last.clear()
        self.seen.clear()
        self._refreshed = -math.inf
        self._window_start = time.time()

    def _members(self) -> list[psutil.Process]:
        now = time.monotonic()
        if now - self._refreshed >= self.refresh_s:
            try:
                self._procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                self._procs = []
            self._refreshed = now
        return self._procs

    def poll(self) -> float:
        """Read every process of the tree; returns the RSS sum (and keeps CPU readings)."""
        rss = 0
        for p in self._members():
            try:
                rss += p.memory_info().rss
                cpu = process_cpu_seconds(p.pid)
                if p.pid not in self._first:
                    self._first[p.pid] = cpu if p.create_time() < self._window_start else 0.0
            except (psutil.NoSuchProcess, ProcessLookupError, OSError):
                continue
            self._last[p.pid] = cpu
            self.seen.add(p.pid)
        self.rss = float(rss)
        return self.rss

    def cpu_seconds(self) -> float:
        return sum(self._last[pid] - self._first[pid] for pid in self._last)


class GpuSet:
    """The NVML devices a server runs on (NVML indices, as nvidia-smi numbers them), summed."""

    def __init__(self, indices: list[int]):
        import pynvml

        pynvml.nvmlInit()
        self.indices = list(indices)
        self.devices = [NvmlDevice(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in self.indices]

    def power_w(self) -> float:
        return sum(d.power_w() for d in self.devices)

    def utilization(self) -> float:
        return float(np.mean([d.utilization() for d in self.devices]))

    def memory_used(self) -> float:
        return sum(d.memory_used() for d in self.devices)

    def total_energy_j(self) -> float:
        """Sum of the total-energy counters; NaN where one is missing."""
        readings = [d.total_energy_j() for d in self.devices]
        return float("nan") if any(r is None for r in readings) else sum(readings)


class ServerCostTracker:
    """MeasuredWindow tracker for a local server's process tree and GPUs; one
    sample of each figure per window. `not_measured` names what it cannot see."""

    def __init__(self, pid: int | None, gpus: GpuSet | None = None, interval_s: float = 0.05, remote: str = ""):
        self.pid, self.gpus = pid, gpus
        self.tokens: list[int] = []  # output tokens of each window, for energy per token (add_tokens)
        self.not_measured: dict[str, str] = {}
        self.samples: dict[str, list[float]] = {}
        self.energy_how = ""  # of the whole windows' energy (the last window's)
        self._sampler: PollingSampler | None = None
        if pid is None:
            why = f"remote server{' at ' + remote if remote else ''}: its processes are not on this host"
            self.not_measured = {"memory": why, "cpu": why, "energy": why, "compute.pcu": why}
            return
        self.tree = ProcessTree(pid)
        if gpus is None:
            self.not_measured["energy"] = ("no server GPUs given (server.gpus): a CPU has no per-process energy "
                                           "reading, and a host energy figure (RAPL or an estimate) would cover "
                                           "client and server together")
        # Read in this order each poll: the energy counter first, nearest the poll's
        # time stamp (the tree walk takes milliseconds); "cpu" reads what "rss" polled.
        probes: dict[str, Callable[[], float]] = {}
        if gpus is not None:
            probes = {"energy": gpus.total_energy_j, "power": gpus.power_w, "util": gpus.utilization,
                      "used": gpus.memory_used}
        probes |= {"rss": self.tree.poll, "cpu": self.tree.cpu_seconds}
        self._sampler = PollingSampler(probes, interval_s)
        self._cores = cpu_cores()

    def begin(self) -> None:
        if self._sampler is None:
            return
        self.tree.reset()
        self._sampler.start()

    def end(self, elapsed_s: float) -> None:
        if self._sampler is None:
            return
        self._sampler.stop()
        s = self._sampler
        self._add("rss_peak", s.peak("rss"))
        self._add("rss_avg", s.time_mean("rss"))
        self._add("cpu_s", self.tree.cpu_seconds())
        if self.gpus is not None:
            self._add("pcu", s.time_mean("util") / 100.0)
            self._add("device_peak", s.peak("used"))
            self._add("device_avg", s.time_mean("used"))
            joules, self.energy_how = self.energy_between(s.times[0], s.times[-1])
            self._add("joules", joules)
            self._add("power", joules / elapsed_s)
        else:
            self._add("pcu", self.tree.cpu_seconds() / (elapsed_s * self._cores))

    def add_tokens(self, tokens: int) -> None:
        """The output tokens the window just measured served (energy per token)."""
        self.tokens.append(tokens)

    def _add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(float(value))

    def energy_between(self, t0: float, t1: float) -> tuple[float, str] | None:
        """GPU energy between two perf_counter times of the last window, and how
        it was read: the counters interpolated at both ends when the span is
        long enough for them, else sampled power integrated. None without GPUs."""
        if self._sampler is None or self.gpus is None:
            return None
        t = np.asarray(self._sampler.times)
        counter = np.asarray(self._sampler.values["energy"])
        if t1 - t0 >= _NVML_COUNTER_MIN_WINDOW_S and not np.isnan(counter).any():
            return (float(np.interp(t1, t, counter) - np.interp(t0, t, counter)),
                    f"NVML total-energy counters of GPUs {self.gpus.indices}")
        grid = np.concatenate([[t0], t[(t > t0) & (t < t1)], [t1]])
        return (float(np.trapezoid(np.interp(grid, t, self._sampler.values["power"]), grid)),
                f"NVML power of GPUs {self.gpus.indices} sampled every {self._sampler.interval_s * 1e3:.0f} ms "
                f"× time")

    def metrics(self) -> list[Metric]:
        if not self.samples:
            return []
        tree = f"server process tree (pid {self.pid}, {len(self.tree.seen)} processes)"
        every = f"every {self._sampler.interval_s * 1e3:.0f} ms"
        out = [from_samples("server.cpu_seconds", self.samples["cpu_s"], Source.TIMER,
                            f"{tree}: kernel per-process CPU clocks, last − first reading")]
        if self.gpus is not None:
            gpus = f"NVML, GPUs {self.gpus.indices}"
            kind = Source.COUNTER if "counter" in self.energy_how else Source.SAMPLED
            out += [
                from_samples("server.rss_peak_bytes", self.samples["rss_peak"], Source.SAMPLED,
                             f"{tree}: host RSS summed over its processes, peak of samples {every}"),
                from_samples("compute.pcu", self.samples["pcu"], Source.SAMPLED, f"{gpus}: mean utilization.gpu"),
                from_samples("memory.device_peak_bytes", self.samples["device_peak"], Source.SAMPLED,
                             f"{gpus}: device memory used, peak"),
                from_samples("memory.avg_bytes", self.samples["device_avg"], Source.SAMPLED,
                             f"{gpus}: device memory used, time-average"),
                from_samples("energy.joules", self.samples["joules"], kind, self.energy_how),
                from_samples("energy.avg_power_w", self.samples["power"], kind, f"{self.energy_how} / window"),
            ]
            if len(self.tokens) == len(self.samples["joules"]) and all(self.tokens):
                out.append(from_samples("energy.joules_per_token",
                                        [j / n for j, n in zip(self.samples["joules"], self.tokens)], kind,
                                        f"{self.energy_how} / output tokens answered in the window"))
        else:
            out += [
                from_samples("memory.peak_bytes", self.samples["rss_peak"], Source.SAMPLED,
                             f"{tree}: RSS summed over its processes (shared pages once per process), peak of "
                             f"samples {every}"),
                from_samples("memory.avg_bytes", self.samples["rss_avg"], Source.SAMPLED,
                             f"{tree}: RSS sum, time-average"),
                from_samples("compute.pcu", self.samples["pcu"], Source.TIMER,
                             f"{tree}: CPU time / (window × {self._cores} cores)"),
            ]
        return out
