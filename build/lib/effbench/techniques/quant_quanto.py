"""optimum-quanto weight quantization: `quantize(model, weights=...)` then `freeze`.

Formats: qint8 stores one int8 per weight and one scale per output row (in the
compute dtype); qint4 packs two weights per byte with a scale and a shift per
group of 128 input features (quanto picks 128, or 96/64/32 where 128 does not
divide the row, or per row for rows of ≤ 128). The group size is quanto's
choice, not a parameter. Runs on CPU and GPU.

quanto 0.2.7's packed (qint4 / qint2) weights fail inside `torch.inference_mode`
("Cannot set version_counter for inference tensor"), which the scenarios run in:
those layers run their forward with inference mode off and autograd off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from effbench.techniques.quant_common import QuantConfig, QuantSpec, target_linears, torch_dtype
from effbench.techniques.registry import register

if TYPE_CHECKING:
    import torch


@dataclass
class QuantoConfig(QuantConfig):
    method: str = "quanto"
    weights: str = "qint8"  # qint8 | qint4 | qint2 | qfloat8


def _apply(model: torch.nn.Module, cfg: QuantoConfig, device: torch.device) -> torch.nn.Module:
    from optimum.quanto import freeze, qtypes, quantize

    if cfg.weights not in qtypes:
        raise ValueError(f"technique.weights={cfg.weights!r}; choose one of {', '.join(sorted(qtypes))}")
    model = model.to(device=device, dtype=torch_dtype(cfg.compute_dtype))
    targets = [name for name, _ in target_linears(model, list(cfg.skip_modules))]
    quantize(model, weights=qtypes[cfg.weights], include=targets)  # exact names: no wildcard surprises
    freeze(model)  # replace float weights by their quantized form
    for name in targets:
        module = model.get_submodule(name)
        if getattr(module, "weight_qtype", None) in (qtypes["qint4"], qtypes["qint2"]):
            _outside_inference_mode(module)
    return model


def _outside_inference_mode(module: torch.nn.Module) -> None:
    import torch

    forward = module.forward

    def run(*args, **kwargs):
        with torch.inference_mode(False), torch.no_grad():
            return forward(*args, **kwargs)

    module.forward = run


register(QuantSpec(
    method="quanto",
    axis="inference",
    schema=QuantoConfig,
    apply=_apply,
    devices=("cpu", "cuda"),
    requires=(("optimum.quanto", "optimum-quanto"),),
))
