"""Precision: the whole model (weights and activations) in one dtype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from effbench.config.schema import DType, TechniqueConfig
from effbench.techniques.registry import TechniqueSpec, register, torch_dtype

if TYPE_CHECKING:
    import torch


@dataclass
class PrecisionConfig(TechniqueConfig):
    method: str = "precision"
    dtype: DType = DType.float32


def _apply(model: torch.nn.Module, cfg: PrecisionConfig, device: torch.device) -> torch.nn.Module:
    return model.to(device=device, dtype=torch_dtype(cfg.dtype))


SPEC = register(
    TechniqueSpec(
        method="precision",
        axis="inference",
        schema=PrecisionConfig,
        apply=_apply,
        compute_dtype=lambda cfg: torch_dtype(cfg.dtype),
        load_dtype=lambda cfg: torch_dtype(cfg.dtype),
    )
)
