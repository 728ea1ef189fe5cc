"""Energy family (docs/spec.md §2): a hardware counter where one is readable, else an
estimate that says it is one.

GPU: NVML total-energy counter (`counter`), or power × time when the counter is
missing or the window is shorter than its update period (`sampled`).
CPU: RAPL package counters (`counter`), else codecarbon's model (`estimated`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from functools import cache
from pathlib import Path

import torch

from effbench.metrics.catalog import from_samples, make_metric
from effbench.metrics.nvml import NvmlDevice
from effbench.metrics.record import Metric, Source
from effbench.metrics.sampler import PollingSampler

_RAPL_ROOT = Path("/sys/class/powercap")
_NVML_COUNTER_MIN_WINDOW_S = 0.1  # NVML's energy counter updates about every 100 ms


# Weakest last: a figure summed over windows is only as good as its weakest window.
_STRENGTH = [Source.COUNTER, Source.SAMPLED, Source.ESTIMATED]


class EnergyTracker:
    """Shared bookkeeping; subclasses implement `begin` and `_stop_reading() -> (joules, source, how)`.
    Each window keeps its own source: a short window read by sampling does not relabel the
    counter readings of the others, and the metric says the weakest source of its windows."""

    def __init__(self, tokens_per_window: int | None = None):
        self.tokens_per_window = tokens_per_window
        self.joules: list[float] = []
        self.seconds: list[float] = []
        self.window_sources: list[tuple[Source, str]] = []
        self.idle_power_w, self._idle_how = self._idle_power()

    def _idle_power(self, seconds: float = 0.5) -> tuple[float, tuple[Source, str]]:
        self.begin()
        time.sleep(seconds)
        joules, source, how = self._stop_reading()
        return joules / seconds, (source, how)

    def begin(self) -> None:
        raise NotImplementedError

    def _stop_reading(self) -> tuple[float, Source, str]:
        raise NotImplementedError

    def end(self, elapsed_s: float) -> None:
        joules, source, how = self._stop_reading()
        self.joules.append(joules)
        self.seconds.append(elapsed_s)
        self.window_sources.append((source, how))

    def _label(self) -> tuple[Source, str]:
        """The weakest source of the windows, and how each kind of window was read."""
        src = max((s for s, _ in self.window_sources), key=_STRENGTH.index)
        kinds = Counter(how for _, how in self.window_sources)
        n = len(self.window_sources)
        how = "; ".join(f"{h} ({c} of {n} windows)" if len(kinds) > 1 else h for h, c in kinds.items())
        return src, how

    def metrics(self) -> list[Metric]:
        src, how = self._label()
        power = [j / s for j, s in zip(self.joules, self.seconds)]
        dynamic = [j - self.idle_power_w * s for j, s in zip(self.joules, self.seconds)]
        out = [
            from_samples("energy.joules", self.joules, src, how),
            from_samples("energy.avg_power_w", power, src, how),
            make_metric("energy.idle_power_w", self.idle_power_w, self._idle_how[0],
                        note=f"{self._idle_how[1]}; 0.5 s idle before the run"),
            from_samples("energy.dynamic_joules", dynamic, src, f"{how}; minus idle power × time"),
        ]
        if self.tokens_per_window:
            n = self.tokens_per_window
            out += [
                from_samples("energy.joules_per_token", [j / n for j in self.joules], src, how),
                from_samples("energy.tokens_per_joule", [n / j for j in self.joules], src, how),
            ]
        return out


class NvmlEnergyTracker(EnergyTracker):
    def __init__(self, nvml: NvmlDevice, tokens_per_window: int | None = None):
        self._nvml = nvml
        self._sampler = PollingSampler({"power": nvml.power_w}, 0.02)
        self._e0: float | None = None
        self._t0 = 0.0
        super().__init__(tokens_per_window)

    def begin(self) -> None:
        self._sampler.start()
        self._e0 = self._nvml.total_energy_j()
        self._t0 = time.perf_counter()

    def _stop_reading(self) -> tuple[float, Source, str]:
        e1 = self._nvml.total_energy_j()
        dt = time.perf_counter() - self._t0
        self._sampler.stop()
        if self._e0 is not None and e1 is not None and dt >= _NVML_COUNTER_MIN_WINDOW_S:
            return e1 - self._e0, Source.COUNTER, "NVML total energy counter"
        # The counter is missing or too coarse for this window: integrate sampled power.
        return self._sampler.time_mean("power") * dt, Source.SAMPLED, "NVML power sampled every 20 ms × time"


class RaplEnergyTracker(EnergyTracker):
    def __init__(self, zones: list[Path], tokens_per_window: int | None = None):
        self._zones = zones
        self._max = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        self._e0: list[int] = []
        super().__init__(tokens_per_window)

    def _read(self) -> list[int]:
        return [int((z / "energy_uj").read_text()) for z in self._zones]

    def begin(self) -> None:
        self._e0 = self._read()

    def _stop_reading(self) -> tuple[float, Source, str]:
        total = 0
        for e0, e1, top in zip(self._e0, self._read(), self._max):
            total += e1 - e0 if e1 >= e0 else e1 + top - e0  # the counter wraps at max range
        return total / 1e6, Source.COUNTER, f"RAPL package counters ({len(self._zones)} zones)"


_codecarbon_lock = threading.Lock()


@cache
def _codecarbon_started():
    """One tracker per process, its first task already run: codecarbon's hardware set-up
    (py-cpuinfo in a subprocess, a TDP table lookup) costs ~1.5–2 s then, later tasks ~1 ms."""
    from codecarbon import OfflineEmissionsTracker

    # codecarbon sets its logger to INFO on import; its chatter is not ours to print.
    logging.getLogger("codecarbon").setLevel(logging.ERROR)

    tracker = OfflineEmissionsTracker(
        country_iso_code="USA",  # only used for CO2, which effbench does not report
        save_to_file=False,
        log_level="error",
        allow_multiple_runs=True,
        tracking_mode="process",
    )
    tracker.start_task("effbench-warmup")
    tracker.stop_task()
    return tracker


def _codecarbon():
    with _codecarbon_lock:  # the set-up may be under way in the background (prepare_energy_tracker)
        return _codecarbon_started()


class CodecarbonEnergyTracker(EnergyTracker):
    def __init__(self, tokens_per_window: int | None = None):
        self._tracker = _codecarbon()
        super().__init__(tokens_per_window)

    def begin(self) -> None:
        self._tracker.start_task("effbench-window")

    def _stop_reading(self) -> tuple[float, Source, str]:
        data = self._tracker.stop_task()
        return (float(data.energy_consumed) * 3.6e6,  # kWh → J
                Source.ESTIMATED,
                "codecarbon estimate (no energy counter readable): CPU TDP/thread model × process load + RAM model")


def _rapl_zones() -> list[Path]:
    """Top-level package zones (intel-rapl:N), readable by this user."""
    zones = []
    for z in sorted(_RAPL_ROOT.glob("intel-rapl:*")):
        if z.name.count(":") == 1:
            try:
                int((z / "energy_uj").read_text())
                zones.append(z)
            except (OSError, ValueError):
                pass
    return zones


def _counter(device: torch.device) -> NvmlDevice | list[Path] | None:
    """What reads this device's energy: NVML, RAPL package zones, or nothing (codecarbon estimates)."""
    if device.type == "cuda" and (nvml := NvmlDevice.open(device)) is not None:
        return nvml
    if device.type == "cpu" and (zones := _rapl_zones()):
        return zones
    return None


def energy_tracker(device: torch.device, tokens_per_window: int | None = None) -> EnergyTracker:
    counter = _counter(device)
    if isinstance(counter, NvmlDevice):
        return NvmlEnergyTracker(counter, tokens_per_window)
    if counter:
        return RaplEnergyTracker(counter, tokens_per_window)
    return CodecarbonEnergyTracker(tokens_per_window)


def prepare_energy_tracker(device: torch.device) -> None:
    """Where energy will be estimated by codecarbon, set it up in a background thread now,
    while the model loads, instead of in front of the first window. Nothing is measured
    meanwhile: the first window's tracker waits for the set-up to end."""
    if _counter(device) is None:
        threading.Thread(target=_codecarbon, name="codecarbon-setup", daemon=True).start()
