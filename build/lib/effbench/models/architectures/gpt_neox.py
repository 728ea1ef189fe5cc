"""Pythia-like transformer (GPT-NeoX): parallel attention + MLP residual,
partial RoPE (25% of each head), LayerNorm, biases, 2-matrix GELU MLP, untied
embeddings — the transformer baseline of the attention-free comparison
(Mamba2, RWKV), as in their papers.

The MLP width defaults to 3/2 × intermediate_size (parameters equal to the
preset's SwiGLU; Pythia's 4 × hidden is within 1% of it at the tiny preset).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from effbench.models.architectures.base import (SPECIAL_TOKENS, Architecture, ArchitectureError, register,
                                                transformer_kv_bytes)
from effbench.models.architectures.gpt2 import ffn_size


@dataclass
class GptNeoxOptions:
    ffn_size: Optional[int] = None  # None: 3/2 × intermediate_size (SwiGLU-equal parameters)
    rotary_pct: float = 0.25  # share of each head's dims RoPE rotates (Pythia: 0.25)
    parallel_residual: bool = True


def build(cfg, opts: GptNeoxOptions, vocab_size: int) -> GPTNeoXForCausalLM:
    if not 0 < opts.rotary_pct <= 1:
        raise ArchitectureError(f"model.arch_options.rotary_pct={opts.rotary_pct} must be in (0, 1]")
    return GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=ffn_size(cfg, opts.ffn_size),
        max_position_embeddings=cfg.max_position,
        use_parallel_residual=bool(opts.parallel_residual),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": float(opts.rotary_pct)},
        tie_word_embeddings=False,
        **SPECIAL_TOKENS,
    ))


register(Architecture("gpt_neox", GptNeoxOptions, build,
                      "Pythia-like GPT-NeoX: parallel residual, partial RoPE, LayerNorm, GELU MLP",
                      kv_bytes_per_token=transformer_kv_bytes))
