"""Compression family (docs/spec.md §2): the bytes the weights really take on disk.

One general rule for every technique: write the model's state dict as a
safetensors file and take its size. What makes it honest for quantized models
is how each state-dict entry becomes plain tensors:

- plain tensors (fp weights; bitsandbytes' and HQQ's packed uint8 weights with
  their absmax / scale / zero / quant-state entries) are written as they are;
- tensor subclasses that implement `__tensor_flatten__` (torchao's Int8Tensor,
  Int4 tensors, optimum-quanto's QTensors) are replaced by their inner tensors,
  recursively: their `numel × element_size` is the *logical* size;
- any other tensor subclass is written as a plain view of its own storage.

Tied weights are written once. bitsandbytes on a CPU rewrites its packed
weights during the first forward: size a bitsandbytes model before running it
(the inference runner sizes right after `apply`, before warm-up) for the file
bytes; after a forward the tensors are read as they are (`_live_state_dict`).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from effbench.metrics.catalog import make_metric
from effbench.metrics.record import Metric, Source

_PLAIN = (torch.Tensor, torch.nn.Parameter)
# Packages whose layers hold quantized weights (named in the size note; their linear
# layers are counted at the module level by effbench.metrics.flops).
QUANT_PACKAGES = ("bitsandbytes", "hqq", "optimum", "torchao", "gptqmodel", "compressed_tensors", "awq")


class SizeBytes(int):
    """A byte count that also says how it was measured (`how`), for the metric note."""

    how: str

    def __new__(cls, value: int, how: str) -> SizeBytes:
        obj = super().__new__(cls, value)
        obj.how = how
        return obj


def _flatten(name: str, t: torch.Tensor, subclasses: Counter) -> Iterator[tuple[str, torch.Tensor]]:
    if type(t) in _PLAIN:
        yield name, t.detach()
    elif hasattr(t, "__tensor_flatten__"):
        subclasses[type(t).__name__] += 1
        attrs, _ = t.__tensor_flatten__()
        for attr in attrs:
            inner = getattr(t, attr)
            if isinstance(inner, torch.Tensor):
                yield from _flatten(f"{name}.{attr}", inner, subclasses)
    else:  # e.g. bitsandbytes Params4bit / Int8Params: their storage is the packed data
        yield name, t.detach().as_subclass(torch.Tensor)


def _packed_for_cpu(module: torch.nn.Module) -> bool:
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def _save_as_held(module: torch.nn.Module, destination: dict, prefix: str, keep_vars: bool) -> None:
    torch.nn.Module._save_to_state_dict(module, destination, prefix, keep_vars)
    for k, v in module.weight.quant_state.as_dict(packed=True).items():
        destination[prefix + "weight." + k] = v if keep_vars else v.detach()


def _live_state_dict(model: torch.nn.Module) -> dict:
    """`model.state_dict()`, reading bitsandbytes' CPU-repacked 4-bit layers as they are held.
    Their own `_save_to_state_dict` converts the packed weight back in place, and the layer's
    later forwards then compute garbage (bitsandbytes 0.50: SmolLM2's held-out perplexity went
    from 25.8 to 10^8 after its resident bytes were counted)."""
    packed = [m for m in model.modules() if _packed_for_cpu(m)]
    for m in packed:  # an instance attribute: state_dict() calls self._save_to_state_dict
        m._save_to_state_dict = _save_as_held.__get__(m)
    try:
        # Outside inference mode: the runners size the model inside it, where torchao's tensor
        # subclasses refuse the detach() that state_dict() does on them.
        with torch.inference_mode(False):
            return model.state_dict()
    finally:
        for m in packed:
            del m._save_to_state_dict


def honest_tensors(model: torch.nn.Module) -> tuple[list[tuple[str, torch.Tensor]], Counter]:
    """The state dict as the plain tensors that really hold its bytes (tensor
    subclasses flattened to their inner tensors, bitsandbytes' packed parameters
    as their storage), each tied/shared view once, not copied; and a count of the
    tensor subclasses flattened. One walk for the file size and the resident bytes."""
    out: list[tuple[str, torch.Tensor]] = []
    seen: set[tuple] = set()
    subclasses: Counter = Counter()
    for key, value in _live_state_dict(model).items():
        if not isinstance(value, torch.Tensor):
            continue
        for name, t in _flatten(key, value, subclasses):
            if t.numel():
                ident = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()), t.device)
                if ident in seen:  # tied weights are stored once
                    continue
                seen.add(ident)
            out.append((name, t))
    return out, subclasses


def plain_state_dict(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], Counter]:
    """`honest_tensors` as plain, contiguous CPU tensors that safetensors can write."""
    tensors, subclasses = honest_tensors(model)
    out: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, t in tensors:
        storage = t.untyped_storage().data_ptr() if t.numel() else None
        t = t.contiguous().cpu()
        if storage is not None and storage in storages and t.device.type == "cpu":
            t = t.clone()  # another view of a storage already written: safetensors wants it separate
        if storage is not None:
            storages.add(storage)
        out[name] = t
    return out, subclasses


def _quantized_modules(model: torch.nn.Module) -> Counter:
    return Counter(type(m).__name__ for m in model.modules()
                   if type(m).__module__.split(".")[0] in QUANT_PACKAGES)


def serialized_size_bytes(model: torch.nn.Module) -> SizeBytes:
    """Size of the model's state dict written as one safetensors file (see the
    module docstring for how quantized tensors are written). The result is an
    int that carries `.how`, the measurement method, for the metric note."""
    tensors, subclasses = plain_state_dict(model)
    with tempfile.TemporaryDirectory(prefix="effbench-size-") as d:
        path = Path(d) / "model.safetensors"
        save_file(tensors, str(path))
        size = path.stat().st_size
    how = "safetensors file size of the state dict"
    modules = _quantized_modules(model)
    if modules:
        how += "; quantized layers " + ", ".join(f"{n}×{c}" for n, c in sorted(modules.items())) + \
               " stored as their packed tensors and quantization state"
    if subclasses:
        how += "; tensor subclasses " + ", ".join(f"{n}×{c}" for n, c in sorted(subclasses.items())) + \
               " counted as the sum of their inner tensors (__tensor_flatten__)"
    return SizeBytes(size, how)


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
    how = getattr(size, "how", "safetensors file size")
    return [
        make_metric("compression.size_bytes", int(size), Source.ANALYTIC, note=how),
        make_metric("compression.baseline_size_bytes", baseline_size, Source.ANALYTIC,
                    note=f"safetensors file size at {baseline_name}"),
        make_metric("compression.ratio", baseline_size / size, Source.ANALYTIC, note=f"{baseline_name} size / size"),
    ]


def baseline_dtype(device_type: str) -> str:
    """The compression baseline's precision (docs/spec.md §2): bf16 on a GPU, fp32 on a CPU."""
    return "bfloat16" if device_type == "cuda" else "float32"
