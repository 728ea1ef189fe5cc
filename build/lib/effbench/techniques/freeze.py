"""Partial freezing (the fine-tuning axis): only the top `top_layers` blocks
and the head — the final norm and the LM head — are trained; the embeddings
and every lower block stay frozen. The EfficientLLM paper froze the first 8
layers of its models; `top_layers` counts from the other end so one setting
works at any depth (set it to num_layers − 8 to match the paper).

With tied embeddings (input embedding = LM head) training the head trains the
embedding matrix too; the trainable count includes it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from effbench.techniques.peft_common import AXIS, FinetuneConfig, decoder_layers, head_modules
from effbench.techniques.registry import TechniqueSpec, register

if TYPE_CHECKING:
    import torch


@dataclass
class FreezeConfig(FinetuneConfig):
    method: str = "freeze"
    top_layers: int = 2  # blocks trained, counted from the top (output side); 0: the head only


def trained_modules(model: torch.nn.Module, cfg: FreezeConfig) -> list[torch.nn.Module]:
    _, layers = decoder_layers(model)
    if not 0 <= cfg.top_layers <= len(layers):
        raise ValueError(f"technique.top_layers={cfg.top_layers}: the model has {len(layers)} layers; "
                         f"choose 0..{len(layers)}")
    top = list(layers)[len(layers) - cfg.top_layers :]
    return top + [m for _, m in head_modules(model)]


def _check(model: torch.nn.Module, cfg: FreezeConfig) -> None:
    trained_modules(model, cfg)


def _apply(model: torch.nn.Module, cfg: FreezeConfig, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    model.requires_grad_(False)
    for module in trained_modules(model, cfg):
        module.requires_grad_(True)
    return model


SPEC = register(TechniqueSpec(method="freeze", axis=AXIS, schema=FreezeConfig, apply=_apply, check=_check))
