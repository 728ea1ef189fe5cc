"""The standard tracker set of a measured window: energy, memory and compute,
chosen for the device (NVML's handle is opened once and shared)."""

from __future__ import annotations

import torch

from effbench.metrics.compute import ComputeTracker
from effbench.metrics.energy import energy_tracker
from effbench.metrics.memory import memory_tracker
from effbench.metrics.window import MeasuredWindow


def standard_window(device: torch.device, compute_dtype: torch.dtype, *, tokens_per_window: int | None = None,
                    flops_per_window: int | None = None, flops_analytic: float | None = None,
                    analytic_rule: str = "2·N·tokens") -> MeasuredWindow:
    """Energy outermost (its sampling thread brackets the others), then memory, then compute.
    Without `flops_per_window` (a backend that cannot count them, or a workload whose FLOPs
    vary per window) the compute tracker reports PCU only."""
    return MeasuredWindow([
        energy_tracker(device, tokens_per_window=tokens_per_window),
        memory_tracker(device),
        ComputeTracker(device, compute_dtype, flops_per_window, flops_analytic, analytic_rule),
    ], device)
