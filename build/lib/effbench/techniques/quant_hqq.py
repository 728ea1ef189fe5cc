"""HQQ (Half-Quadratic Quantization): calibration-free, each nn.Linear replaced
by an `HQQLinear`. transformers' `HqqConfig` path raises NotImplementedError on
a CPU, so the layers are replaced directly, which runs on CPU and GPU.

Format: `nbits` per weight packed into uint8, one scale and one zero point per
group of `group_size` weights along `axis` (in the compute dtype; HQQ's
optimizer fits them to minimise the weight error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from effbench.techniques.quant_common import QuantConfig, QuantSpec, replace_module, target_linears, torch_dtype
from effbench.techniques.registry import register

if TYPE_CHECKING:
    import torch


@dataclass
class HqqConfig(QuantConfig):
    method: str = "hqq"
    nbits: int = 4  # 1, 2, 3, 4 or 8
    group_size: int = 64
    axis: int = 1  # 1: groups along input features (what HQQ's CPU/PyTorch backend supports best)
    optimize: bool = True  # HQQ's half-quadratic fit of scale and zero (False: plain round-to-nearest)


def _apply(model: torch.nn.Module, cfg: HqqConfig, device: torch.device) -> torch.nn.Module:
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    dtype = torch_dtype(cfg.compute_dtype)
    model = model.to(device=device, dtype=dtype)
    qc = BaseQuantizeConfig(nbits=cfg.nbits, group_size=cfg.group_size, axis=cfg.axis)
    qc["weight_quant_params"]["optimize"] = cfg.optimize
    for name, linear in list(target_linears(model, list(cfg.skip_modules))):
        if linear.weight.numel() % cfg.group_size:
            raise ValueError(f"{name} has {linear.weight.numel()} weights, not a multiple of "
                             f"technique.group_size={cfg.group_size}")
        replace_module(model, name, HQQLinear(linear, quant_config=qc, compute_dtype=dtype, device=str(device),
                                              del_orig=True))
    return model


register(QuantSpec(
    method="hqq",
    axis="inference",
    schema=HqqConfig,
    apply=_apply,
    devices=("cpu", "cuda"),
    requires=(("hqq", "hqq"),),
))
