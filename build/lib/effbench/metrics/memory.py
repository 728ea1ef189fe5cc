"""Memory family (SPEC §2): peak, average and AMU over the measured window."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import torch

from effbench.metrics.catalog import from_samples
from effbench.metrics.nvml import NvmlDevice
from effbench.metrics.record import Metric, Source
from effbench.metrics.sampler import PollingSampler

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_high_water_mark() -> bool:
    """Writing 5 to clear_refs resets VmHWM (Linux ≥ 4.0) so it covers the window only."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _high_water_mark_bytes() -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class CpuMemoryTracker:
    """Process RSS sampled every `interval_s`, cross-checked with the kernel's high-water mark."""

    def __init__(self, interval_s: float = 0.05):
        proc = psutil.Process(os.getpid())
        self._sampler = PollingSampler({"rss": lambda: proc.memory_info().rss}, interval_s)
        self._total = psutil.virtual_memory().total
        self._hwm_ok = False
        self.peak: list[float] = []
        self.delta: list[float] = []
        self.avg: list[float] = []
        self.hwm: list[float] = []

    def begin(self) -> None:
        self._hwm_ok = _reset_high_water_mark()
        self._sampler.start()

    def end(self, elapsed_s: float) -> None:
        self._sampler.stop()
        start_rss = self._sampler.values["rss"][0]
        peak = self._sampler.peak("rss")
        if self._hwm_ok:
            # The kernel sees every page fault; sampling can miss a short spike.
            hwm = _high_water_mark_bytes()
            self.hwm.append(hwm)
            peak = max(peak, hwm)
        self.peak.append(peak)
        self.delta.append(peak - start_rss)
        self.avg.append(self._sampler.time_mean("rss"))

    def metrics(self) -> list[Metric]:
        how = f"psutil RSS every {self._sampler.interval_s * 1000:.0f} ms"
        if self.hwm:
            how += ", max with kernel VmHWM reset at window start"
        return [
            from_samples("memory.peak_bytes", self.peak, Source.SAMPLED, how),
            from_samples("memory.peak_delta_bytes", self.delta, Source.SAMPLED, how),
            from_samples("memory.avg_bytes", self.avg, Source.SAMPLED, how),
            from_samples("memory.amu", [a / self._total for a in self.avg], Source.SAMPLED,
                         f"{how}; divided by host memory {self._total} B"),
        ]


class CudaMemoryTracker:
    """CUDA allocator peaks, plus NVML device-used memory sampled when NVML is present."""

    def __init__(self, device: torch.device, interval_s: float = 0.02):
        self.device = device
        self._nvml = NvmlDevice.open(device)
        probe = (self._nvml.memory_used if self._nvml else lambda: torch.cuda.memory_reserved(device))
        self._sampler = PollingSampler({"used": probe}, interval_s)
        self._total = torch.cuda.get_device_properties(device).total_memory
        self.peak: list[float] = []
        self.delta: list[float] = []
        self.reserved: list[float] = []
        self.device_peak: list[float] = []
        self.avg: list[float] = []
        self._start_alloc = 0

    def begin(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)
        self._start_alloc = torch.cuda.memory_allocated(self.device)
        self._sampler.start()

    def end(self, elapsed_s: float) -> None:
        self._sampler.stop()
        peak = torch.cuda.max_memory_allocated(self.device)
        self.peak.append(peak)
        self.delta.append(peak - self._start_alloc)
        self.reserved.append(torch.cuda.max_memory_reserved(self.device))
        self.device_peak.append(self._sampler.peak("used"))
        self.avg.append(self._sampler.time_mean("used"))

    def metrics(self) -> list[Metric]:
        used = "NVML device memory used" if self._nvml else "torch.cuda.memory_reserved (no NVML)"
        return [
            from_samples("memory.peak_bytes", self.peak, Source.COUNTER, "torch.cuda.max_memory_allocated"),
            from_samples("memory.peak_delta_bytes", self.delta, Source.COUNTER, "max allocated − allocated at start"),
            from_samples("memory.peak_reserved_bytes", self.reserved, Source.COUNTER, "torch.cuda.max_memory_reserved"),
            from_samples("memory.device_peak_bytes", self.device_peak, Source.SAMPLED, used),
            from_samples("memory.avg_bytes", self.avg, Source.SAMPLED, used),
            from_samples("memory.amu", [a / self._total for a in self.avg], Source.SAMPLED,
                         f"{used} / device total {self._total} B"),
        ]


def memory_tracker(device: torch.device):
    return CudaMemoryTracker(device) if device.type == "cuda" else CpuMemoryTracker()


def _tensor_bytes(obj, seen: set[int], depth: int = 0) -> int:
    """Bytes of every distinct tensor reachable from a cache object (any cache
    class: attention K/V layers, MLA, recurrent conv/SSM states)."""
    if depth > 6:
        return 0
    if isinstance(obj, torch.Tensor):
        key = obj.data_ptr()
        if key in seen or obj.device.type == "meta":
            return 0
        seen.add(key)
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
        items = vars(obj).values()
    else:
        return 0
    return sum(_tensor_bytes(v, seen, depth + 1) for v in items)


@torch.no_grad()
def measured_kv_bytes_per_token(model: torch.nn.Module, input_ids: torch.Tensor) -> float:
    """Marginal cache bytes per token per sequence: prefill half the prompt and
    the whole prompt, and divide the difference in cache size by the extra tokens.
    The difference cancels constant state (recurrent models give ~0)."""
    half = input_ids.shape[1] // 2
    if half < 1:
        raise ValueError("need a prompt of at least 2 tokens to measure the cache")
    sizes = []
    for length in (half, input_ids.shape[1]):
        out = model(input_ids=input_ids[:, :length], use_cache=True)
        # The field differs by family and version: past_key_values / cache (attention),
        # cache_params (Mamba), state (RWKV).
        cache = next((out[k] for k in ("cache", "past_key_values", "cache_params", "state") if k in out), None)
        if cache is None:
            raise ValueError(f"{type(model).__name__} returned no generation cache")
        sizes.append(_tensor_bytes(cache, set()))
    return (sizes[1] - sizes[0]) / (input_ids.shape[0] * (input_ids.shape[1] - half))
