"""Memory family (docs/spec.md §2): peak, working memory, average and AMU over the
measured window; and the model's own resident bytes, counted, beside them."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache
from pathlib import Path

import psutil
import torch

from effbench.metrics.catalog import RUNTIME_DOMINATED_SHARE, from_samples, make_metric
from effbench.metrics.compression import honest_tensors
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


@cache
def _malloc_trim():
    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None


def _return_free_heap() -> bool:
    """glibc keeps memory freed into its heaps resident for reuse: without this, the
    working memory of a window after warm-up is already in RSS and its peak delta
    reads ~0. malloc_trim(0) hands the free pages back to the OS (glibc only)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class CpuMemoryTracker:
    """Process RSS sampled every `interval_s`, cross-checked with the kernel's high-water
    mark. The peak delta is the window's peak minus the RSS at its start, taken after
    freed heap memory went back to the OS: the workload's working memory."""

    def __init__(self, interval_s: float = 0.05):
        proc = psutil.Process(os.getpid())
        self._sampler = PollingSampler({"rss": lambda: proc.memory_info().rss}, interval_s)
        self._total = psutil.virtual_memory().total
        self._hwm_ok = False
        self._trimmed = False
        self.peak: list[float] = []
        self.delta: list[float] = []
        self.avg: list[float] = []
        self.hwm: list[float] = []

    def begin(self) -> None:
        self._trimmed = _return_free_heap()
        self._hwm_ok = _reset_high_water_mark()
        self._sampler.start()  # its first reading is the RSS just before the window

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
        delta_how = f"{how}; peak − RSS at window start" + (
            ", after malloc_trim(0) returned freed heap pages to the OS" if self._trimmed
            else " (no malloc_trim here: memory freed by the warm-up may already be resident)")
        return [
            from_samples("memory.peak_bytes", self.peak, Source.SAMPLED, how),
            from_samples("memory.peak_delta_bytes", self.delta, Source.SAMPLED, delta_how),
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


def cache_bytes(cache) -> int:
    """Bytes of a generation cache object (any class), each distinct tensor once."""
    return _tensor_bytes(cache, set())


def model_resident_bytes(model: torch.nn.Module) -> int:
    """Bytes the model's own tensors hold: the state dict's tensors as stored
    (quantized ones as packed data + quantization state, tensor subclasses as their
    inner tensors: effbench.metrics.compression.honest_tensors) and the buffers kept
    out of it (rotary frequencies), each storage once."""
    tensors, _ = honest_tensors(model)
    plain_buffers = [b for b in model.buffers() if type(b) is torch.Tensor]
    storages = {}
    for t in [t for _, t in tensors] + plain_buffers:
        if t.device.type != "meta":
            storage = t.untyped_storage()
            storages[(t.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def decode_weight_bytes(model: torch.nn.Module) -> int:
    """The weight bytes one decode step reads: every resident tensor but the input embedding,
    of which a step looks up a row per sequence (unless it is tied to the LM head, which
    reads all of it)."""
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is emb
    return model_resident_bytes(model) - (0 if tied else emb.untyped_storage().nbytes())


def resident_memory_metrics(model: torch.nn.Module, cache=None, peak_bytes: float | None = None) -> list[Metric]:
    """memory.model_resident_bytes; memory.kv_cache_bytes of a generation cache; and,
    given the window's peak (memory.peak_bytes), memory.runtime_share: how much of
    that peak is not the model's (interpreter, libraries, allocator, activations)."""
    resident = model_resident_bytes(model)
    out = [make_metric("memory.model_resident_bytes", resident, Source.ANALYTIC,
                       note="weights and buffers as stored (quantized: packed data and quantization state; "
                            "tensor subclasses: inner tensors), each storage once")]
    kv = 0
    if cache is not None:
        kv = cache_bytes(cache)
        out.append(make_metric("memory.kv_cache_bytes", kv, Source.ANALYTIC,
                               note=f"tensors of the {type(cache).__name__} after one window's generate"))
    if peak_bytes:
        share = (peak_bytes - resident - kv) / peak_bytes
        verdict = (f"runtime-dominated (> {RUNTIME_DOMINATED_SHARE:g}): the peak does not tell techniques apart, "
                   "compare memory.model_resident_bytes" if share > RUNTIME_DOMINATED_SHARE else "model-dominated")
        out.append(make_metric("memory.runtime_share", share, Source.SAMPLED,
                               note=f"(peak {peak_bytes:.0f} B − model {resident} B − KV cache {kv} B) / peak; "
                                    + verdict))
    return out


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
        sizes.append(cache_bytes(cache))
    return (sizes[1] - sizes[0]) / (input_ids.shape[0] * (input_ids.shape[1] - half))
