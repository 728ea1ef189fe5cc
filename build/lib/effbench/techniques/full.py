"""Full fine-tuning (the fine-tuning axis' baseline): every parameter trained."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from effbench.techniques.peft_common import AXIS, FinetuneConfig
from effbench.techniques.registry import TechniqueSpec, register

if TYPE_CHECKING:
    import torch


@dataclass
class FullConfig(FinetuneConfig):
    method: str = "full"


def _apply(model: torch.nn.Module, cfg: FullConfig, device: torch.device) -> torch.nn.Module:
    return model.to(device).requires_grad_(True)


SPEC = register(TechniqueSpec(method="full", axis=AXIS, schema=FullConfig, apply=_apply))
