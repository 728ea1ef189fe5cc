"""Compression family (SPEC §2): the bytes the weights really take on disk."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file, save_model

from effbench.metrics.catalog import make_metric
from effbench.metrics.record import Metric, Source


def serialized_size_bytes(model: torch.nn.Module) -> int:
    """Size of the model's safetensors file. Serializing (rather than summing
    numel × element_size) stays honest for quantized tensor subclasses, whose
    element size is the logical one. `save_model` de-duplicates tied weights."""
    with tempfile.TemporaryDirectory(prefix="effbench-size-") as d:
        path = Path(d) / "model.safetensors"
        save_model(model, str(path))
        return path.stat().st_size


def serialized_size_at(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Safetensors size of the model's floating tensors cast to `dtype`, written
    from a transient copy so the model itself is left untouched."""
    tensors, seen = {}, set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:  # tied weights are stored once
            continue
        seen.add(t.data_ptr())
        tensors[name] = (t.to(dtype) if t.is_floating_point() else t).detach().contiguous().cpu()
    with tempfile.TemporaryDirectory(prefix="effbench-size-") as d:
        path = Path(d) / "model.safetensors"
        save_file(tensors, str(path))
        return path.stat().st_size


def compression_metrics(size: int, baseline_size: int, baseline_name: str) -> list[Metric]:
    how = "safetensors file size"
    return [
        make_metric("compression.size_bytes", size, Source.ANALYTIC, note=how),
        make_metric("compression.baseline_size_bytes", baseline_size, Source.ANALYTIC, note=f"{how} at {baseline_name}"),
        make_metric("compression.ratio", baseline_size / size, Source.ANALYTIC, note=f"{baseline_name} size / size"),
    ]
