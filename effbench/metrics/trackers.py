"""The standard tracker set of a measured window: energy, memory and compute,
chosen for the device (NVML's handle is opened once and shared)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from effbench.metrics.compute import ComputeTracker
from effbench.metrics.flops import FlopCount
from effbench.metrics.energy import energy_tracker
from effbench.metrics.memory import memory_tracker
from effbench.metrics.window import MeasuredWindow


def standard_window(device: torch.device, compute_dtype: torch.dtype, *, tokens_per_window: int | None = None,
                    flops: FlopCount | None = None, flops_analytic: float | None = None,
                    analytic_rule: str = "2·N·tokens", linear_shapes: Sequence[tuple[int, int]] | None = None,
                    tokens: int | None = None, cpu_max_ghz: float | None = None) -> MeasuredWindow:
    """Energy outermost (its sampling thread brackets the others), then memory, then compute.
    `flops`: the FLOPs of one window. Without a count (a backend that cannot count them, a
    quantized layer no formula covers, a workload whose FLOPs vary per window) the compute
    tracker reports PCU only. `linear_shapes` and `tokens` size the achievable-peak probe
    like the model's own layers."""
    counted = flops if flops is not None and flops.flops is not None else None
    return MeasuredWindow([
        energy_tracker(device, tokens_per_window=tokens_per_window),
        memory_tracker(device),
        ComputeTracker(device, compute_dtype, counted.flops if counted else None, flops_analytic, analytic_rule,
                       linear_shapes=linear_shapes, tokens=tokens, cpu_max_ghz=cpu_max_ghz,
                       **({"flops_note": counted.note} if counted else {})),
    ], device)
