"""Shared pieces of the fine-tuning techniques (LoRA family, freeze, full).

Every fine-tuning schema has `lr`: the technique's own learning rate, which
wins over `scenario.lr` (adapters usually want a larger one than full
fine-tuning). `decoder_layers` and `head_modules` find a model's block stack
and output side in any transformers causal LM, so partial freezing works for
every family of `effbench.models.architectures` and hub models alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from effbench.config.schema import TechniqueConfig

if TYPE_CHECKING:
    import torch

AXIS = "finetuning"


@dataclass
class FinetuneConfig(TechniqueConfig):
    lr: Optional[float] = None  # None: scenario.lr


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """(name, ModuleList) of the model's block stack: the ModuleList holding the
    most parameters (Llama `model.layers`, GPT-2 `transformer.h`, RWKV `rwkv.blocks`, ...)."""
    import torch

    best: tuple[int, str, torch.nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            n = sum(p.numel() for p in module.parameters())
            if best is None or n > best[0]:
                best = (n, name, module)
    if best is None:
        raise ValueError(f"{type(model).__name__} has no stack of layers (nn.ModuleList) to freeze partially")
    return best[1], best[2]


def head_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The output side above the block stack: the final norm(s) (children of the
    backbone registered after the stack, e.g. Llama `model.norm`, GPT-2
    `transformer.ln_f`) and the LM head (`get_output_embeddings()`)."""
    stack_name, _ = decoder_layers(model)
    parent_name, _, child = stack_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    names = list(dict(parent.named_children()))
    after = names[names.index(child) + 1 :]
    out = [(f"{parent_name}.{n}" if parent_name else n, parent.get_submodule(n)) for n in after]
    out = [(n, m) for n, m in out if any(True for _ in m.parameters())]
    head = model.get_output_embeddings()
    if head is not None:
        name = next(n for n, m in model.named_modules() if m is head)
        out.append((name, head))
    return out
