"""Absolute positions: GPT-2 with `position: learned | sinusoidal`.

The position-encoding variants share one block: pre-LayerNorm, multi-head
attention with biases, a 2-matrix GELU MLP, untied embeddings, no dropout.
This module supplies the absolute variants (a `wpe` table added to the token
embeddings); `falcon.py`, configured as the same block, supplies RoPE and
ALiBi. With the same MLP width the two have identical parameter shapes apart
from `wpe` (max_position × hidden: +262k, ~8%, at the tiny preset's 1024
positions — the real cost of learned absolute positions).

The MLP width defaults to 3/2 × intermediate_size: a 2-matrix MLP of that
width has the parameters of the preset's 3-matrix SwiGLU (3·d·I = 2·d·F).
Activation is exact GELU (GPT-2's default is the tanh approximation) to match
Falcon's.

`sinusoidal` writes the fixed sin/cos table of "Attention Is All You Need"
(PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)) into `wpe` with
requires_grad=False. It is a subclass (model_type `effbench_gpt2_sinusoidal`,
registered with the Auto classes) so that a saved checkpoint reloads by
`AutoModelForCausalLM.from_pretrained` with the table still frozen. The frozen
table still counts in the parameter total (same total as `learned`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from effbench.models.architectures.base import (SPECIAL_TOKENS, Architecture, mha_kv_bytes, register, require_choice,
                                                require_positive)

POSITIONS = ("learned", "sinusoidal")


def ffn_size(cfg, override: Optional[int]) -> int:
    """MLP width of the GPT-2-style block: SwiGLU-equal parameters unless given."""
    size = override or (3 * cfg.intermediate_size + 1) // 2
    require_positive("model.arch_options.ffn_size", size)
    return size


def sinusoidal_table(positions: int, dim: int) -> torch.Tensor:
    pos = torch.arange(positions, dtype=torch.float64).unsqueeze(1)
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)[:, : dim // 2]
    return table.float()


class SinusoidalGPT2Config(GPT2Config):
    model_type = "effbench_gpt2_sinusoidal"


class SinusoidalGPT2LMHeadModel(GPT2LMHeadModel):
    """GPT-2 whose position table is the fixed sinusoidal one (frozen)."""

    config_class = SinusoidalGPT2Config

    def __init__(self, config: SinusoidalGPT2Config):
        super().__init__(config)
        wpe = self.transformer.wpe.weight
        if wpe.device.type != "meta":  # from_pretrained builds on meta, then loads the saved table
            with torch.no_grad():
                wpe.copy_(sinusoidal_table(wpe.shape[0], wpe.shape[1]).to(wpe.dtype))
        wpe.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        model.transformer.wpe.weight.requires_grad_(False)
        return model


AutoConfig.register(SinusoidalGPT2Config.model_type, SinusoidalGPT2Config)
AutoModelForCausalLM.register(SinusoidalGPT2Config, SinusoidalGPT2LMHeadModel)


@dataclass
class Gpt2Options:
    position: str = "learned"  # learned | sinusoidal
    ffn_size: Optional[int] = None  # None: 3/2 × intermediate_size (SwiGLU-equal parameters)


def build(cfg, opts: Gpt2Options, vocab_size: int) -> GPT2LMHeadModel:
    require_choice("model.arch_options.position", opts.position, POSITIONS)
    sinusoidal = opts.position == "sinusoidal"
    config_cls, model_cls = ((SinusoidalGPT2Config, SinusoidalGPT2LMHeadModel) if sinusoidal
                             else (GPT2Config, GPT2LMHeadModel))
    return model_cls(config_cls(
        vocab_size=vocab_size,
        n_embd=cfg.hidden_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        n_inner=ffn_size(cfg, opts.ffn_size),
        n_positions=cfg.max_position,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        tie_word_embeddings=False,
        **SPECIAL_TOKENS,
    ))


def kv_bytes(model, dtype_bytes: int) -> int:
    c = model.config
    return mha_kv_bytes(c.n_layer, c.n_head, c.n_embd // c.n_head, dtype_bytes)


register(Architecture("gpt2", Gpt2Options, build,
                      "GPT-2 (LayerNorm, biases, GELU MLP); position: learned | sinusoidal (fixed table)",
                      model_types=("gpt2", SinusoidalGPT2Config.model_type), kv_bytes_per_token=kv_bytes))
