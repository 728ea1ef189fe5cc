"""Compute family (SPEC §2): counted FLOPs, MFU against a peak, PCU."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import psutil
import torch
from torch.utils import flop_counter

from effbench.hardware import cpu_cores, synchronize
from effbench.metrics.catalog import from_samples, make_metric
from effbench.metrics.nvml import NvmlDevice
from effbench.metrics.record import Metric, Source
from effbench.metrics.sampler import PollingSampler

_aten = torch.ops.aten


def _register_cpu_sdpa_formulas() -> None:
    """FlopCounterMode counts 0 for the CPU flash-attention kernels; give it the
    same formulas it uses for the CUDA ones (not causal-aware, as there)."""
    registry = flop_counter.flop_registry
    fwd = _aten._scaled_dot_product_flash_attention_for_cpu
    bwd = _aten._scaled_dot_product_flash_attention_for_cpu_backward
    if fwd not in registry and fwd.default not in registry:

        @flop_counter.register_flop_formula(fwd)
        def _cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(q, k, v)

    if bwd not in registry and bwd.default not in registry:

        @flop_counter.register_flop_formula(bwd)
        def _cpu_sdpa_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)


_register_cpu_sdpa_formulas()


def _register_grouped_mm_formula() -> None:
    """FlopCounterMode counts 0 for `_grouped_mm`, which transformers' fused MoE
    experts use forward and backward: without this, MoE FLOPs and MFU miss the experts."""
    op = getattr(_aten, "_grouped_mm", None)
    if op is None or op in flop_counter.flop_registry or op.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _grouped_mm(a, b, *args, out_shape=None, **kwargs) -> int:
        if len(a) == 2 and len(b) == 2:
            # Groups split the shared K dimension (weight gradients): M × N per group, K summed.
            return 2 * a[0] * a[1] * b[1]
        # Each output element is one K-long dot product (2-D × 3-D with offsets, or batched 3-D × 3-D).
        out = 1
        for d in out_shape:
            out *= d
        return 2 * out * a[-1]


_register_grouped_mm_formula()


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn`, counted op by op (not timed: the counter slows ops)."""
    with flop_counter.FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Peak:
    flops_per_s: float
    source: Source
    note: str


# Dense (no 2:4 sparsity) tensor-core peaks from vendor datasheets, FLOP/s.
# fp32 is the non-tensor-core rate: torch does not use TF32 for matmul by default.
_GPU_PEAKS = {
    "H200": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12},
    "H100 PCIe": {torch.bfloat16: 756e12, torch.float16: 756e12, torch.float32: 51e12},
    "H100": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12},
    "A100": {torch.bfloat16: 312e12, torch.float16: 312e12, torch.float32: 19.5e12},
    "L40S": {torch.bfloat16: 362e12, torch.float16: 362e12, torch.float32: 91.6e12},
    "L4": {torch.bfloat16: 121e12, torch.float16: 121e12, torch.float32: 30.3e12},
    "A10G": {torch.bfloat16: 70e12, torch.float16: 70e12, torch.float32: 31.2e12},
}


@cache
def peak_flops(device: torch.device, dtype: torch.dtype) -> Peak:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, table in _GPU_PEAKS.items():  # most specific names first
            if key in name and dtype in table:
                return Peak(table[dtype], Source.ANALYTIC, f"datasheet peak for {key} at {dtype}")
    return _calibrated_peak(device, dtype)


def _calibrated_peak(device: torch.device, dtype: torch.dtype, n: int = 1024, budget_s: float = 0.6) -> Peak:
    """Best observed square-matmul rate: an achievable peak, not a datasheet one."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.matmul(a, b)  # warm-up: first call pays for kernel selection
    best = float("inf")
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline:
        synchronize(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return Peak(2 * n**3 / best, Source.TIMER,
                f"calibrated: best {n}x{n} {dtype} matmul over {budget_s}s, {torch.get_num_threads()} threads")


class ComputeTracker:
    """PCU per window, and MFU from FLOPs counted once for the window's workload
    (flops_per_window None: a workload whose FLOPs vary per window, PCU only)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, flops_per_window: int | None = None,
                 flops_analytic: float | None = None, analytic_rule: str = "2·N·tokens"):
        self.device = device
        self.flops = flops_per_window
        self.flops_analytic = flops_analytic
        self.analytic_rule = analytic_rule
        self.peak = peak_flops(device, dtype) if flops_per_window is not None else None
        self._nvml = NvmlDevice.open(device)
        self._sampler = PollingSampler({"util": self._nvml.utilization}, 0.02) if self._nvml else None
        self._proc = psutil.Process(os.getpid())
        self._cores = cpu_cores()
        self._cpu0 = 0.0
        self.pcu: list[float] = []
        self.achieved: list[float] = []

    def _cpu_time(self) -> float:
        t = self._proc.cpu_times()
        return t.user + t.system

    def begin(self) -> None:
        if self._sampler:
            self._sampler.start()
        self._cpu0 = self._cpu_time()

    def end(self, elapsed_s: float) -> None:
        if self._sampler:
            self._sampler.stop()
            self.pcu.append(self._sampler.time_mean("util") / 100.0)
        else:
            self.pcu.append((self._cpu_time() - self._cpu0) / (elapsed_s * self._cores))
        if self.flops is not None:
            self.achieved.append(self.flops / elapsed_s)

    def metrics(self) -> list[Metric]:
        pcu_how = ("NVML utilization.gpu sampled every 20 ms" if self._sampler
                   else f"process CPU time / (wall time × {self._cores} cores)")
        pcu_src = Source.SAMPLED if self._sampler else Source.TIMER
        pcu = from_samples("compute.pcu", self.pcu, pcu_src, pcu_how)
        if self.flops is None:
            return [pcu]
        return [
            make_metric("compute.flops", self.flops, Source.ANALYTIC, note="torch.utils.flop_counter, one window"),
            make_metric("compute.flops_analytic", self.flops_analytic, Source.ANALYTIC, note=self.analytic_rule),
            make_metric("compute.peak_flops_per_s", self.peak.flops_per_s, self.peak.source, note=self.peak.note),
            from_samples("compute.achieved_flops_per_s", self.achieved, Source.TIMER, "counted FLOPs / window time"),
            from_samples("compute.mfu", [a / self.peak.flops_per_s for a in self.achieved], Source.TIMER,
                         f"achieved / peak ({self.peak.note})"),
            pcu,
        ]
