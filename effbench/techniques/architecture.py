"""Architecture variants (the pretraining axis): the same size preset built as
another family or with one option changed (KV heads, MLA, MoE, positions, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from effbench.config.schema import BuiltinModelConfig, TechniqueConfig
from effbench.techniques.registry import TechniqueSpec, register


@dataclass
class ArchitectureConfig(TechniqueConfig):
    method: str = "architecture"
    arch: str = "llama"  # a family of effbench.models.architectures
    options: dict[str, Any] = field(default_factory=dict)  # the family's options, checked at build
    # The variant is meant to differ in size (e.g. a dense model of equal *total*
    # parameters to an MoE): exempt from the sweep's ±10% size-fairness warning.
    size_change_intended: bool = False


def _configure(model_cfg: BuiltinModelConfig, cfg: ArchitectureConfig) -> BuiltinModelConfig:
    if model_cfg.source != "builtin":
        raise ValueError(f"architecture techniques build a model from a size preset; model.source={model_cfg.source!r} "
                         "is a pretrained model (use model=tiny or another built-in preset)")
    return replace(model_cfg, arch=cfg.arch, arch_options={**model_cfg.arch_options, **cfg.options})


SPEC = register(
    TechniqueSpec(
        method="architecture",
        axis="architecture",
        schema=ArchitectureConfig,
        apply=lambda model, cfg, device: model.to(device),
        configure_model=_configure,
    )
)
