"""torchao: `quantize_(model, config)` turns each nn.Linear weight into a tensor
subclass (its logical size stays the float one: size is counted from its
inner tensors, see effbench.metrics.compression).

- `torchao-int8` (CPU and GPU): `mode=weight_only` (Int8WeightOnlyConfig: int8
  weights, one scale and zero point per output row, or per `group_size`) or
  `mode=dynamic` (Int8DynamicActivationInt8WeightConfig: int8 weights per row,
  activations quantized per token at run time).
- `torchao-int4` (GPU only): Int4WeightOnlyConfig, two weights per byte with a
  bf16 scale and zero point per group of `group_size`. torchao 0.18's int4 on a
  CPU needs the mslk kernels; the default `packing=tile_packed_to_4d` uses
  PyTorch's own CUDA tinygemm kernel and wants bfloat16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from effbench.config.schema import DType
from effbench.techniques.quant_common import QuantConfig, QuantSpec, skipped, torch_dtype
from effbench.techniques.registry import UnsupportedTechnique, register

if TYPE_CHECKING:
    import torch

_REQUIRES = (("torchao", "torchao"),)


@dataclass
class TorchaoInt8Config(QuantConfig):
    method: str = "torchao-int8"
    mode: str = "weight_only"  # weight_only | dynamic (int8 activations per token, int8 weights)
    group_size: Optional[int] = None  # weight_only: None = one scale per output row


@dataclass
class TorchaoInt4Config(QuantConfig):
    method: str = "torchao-int4"
    compute_dtype: DType = DType.bfloat16  # the tinygemm int4 kernel runs in bf16
    group_size: int = 128
    packing: str = "tile_packed_to_4d"  # torchao Int4PackingFormat: tile_packed_to_4d | plain | preshuffled | ...


def _quantize(model: torch.nn.Module, ao_config, cfg: QuantConfig, device: torch.device) -> torch.nn.Module:
    import torch
    from torchao.quantization import quantize_

    model = model.to(device=device, dtype=torch_dtype(cfg.compute_dtype))
    patterns = list(cfg.skip_modules)
    try:
        quantize_(model, ao_config,
                  filter_fn=lambda module, fqn: isinstance(module, torch.nn.Linear) and not skipped(fqn, patterns))
    except ImportError as e:  # e.g. "Requires mslk >= 1.0.0" for int4 packings built on mslk kernels
        raise UnsupportedTechnique(f"technique method {cfg.method!r} with this configuration needs a kernel "
                                   f"package that is not installed: {e}") from e
    return model


def _apply_int8(model: torch.nn.Module, cfg: TorchaoInt8Config, device: torch.device) -> torch.nn.Module:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, PerGroup, PerRow

    if cfg.mode == "weight_only":
        granularity = PerRow() if cfg.group_size is None else PerGroup(cfg.group_size)
        ao = Int8WeightOnlyConfig(granularity=granularity, set_inductor_config=False)
    elif cfg.mode == "dynamic":
        if cfg.group_size is not None:
            raise ValueError("technique.group_size applies to mode=weight_only; dynamic int8 is per row")
        ao = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    else:
        raise ValueError(f"technique.mode={cfg.mode!r}; choose weight_only or dynamic")
    return _quantize(model, ao, cfg, device)


def _apply_int4(model: torch.nn.Module, cfg: TorchaoInt4Config, device: torch.device) -> torch.nn.Module:
    from torchao.quantization import Int4WeightOnlyConfig

    ao = Int4WeightOnlyConfig(group_size=cfg.group_size, int4_packing_format=cfg.packing, set_inductor_config=False)
    return _quantize(model, ao, cfg, device)


for _method, _schema, _apply, _devices in (("torchao-int8", TorchaoInt8Config, _apply_int8, ("cpu", "cuda")),
                                           ("torchao-int4", TorchaoInt4Config, _apply_int4, ("cuda",))):
    register(QuantSpec(
        method=_method,
        axis="inference",
        schema=_schema,
        apply=_apply,
        devices=_devices,
        requires=_REQUIRES,
    ))
