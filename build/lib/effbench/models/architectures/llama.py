"""Llama family: MHA / GQA / MQA by `num_kv_heads` (None = num_heads), RoPE,
SwiGLU, RMSNorm, untied embeddings. The reference block of the size presets.

`ffn_multiplier` widens the SwiGLU FFN to intermediate_size × multiplier: the
dense model of equal *total* parameters to an MoE (num_experts / top_k)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from transformers import LlamaConfig, LlamaForCausalLM

from effbench.models.architectures.base import (SPECIAL_TOKENS, Architecture, register, require_divides,
                                                require_positive, transformer_kv_bytes)


@dataclass
class LlamaOptions:
    num_kv_heads: Optional[int] = None  # None: MHA
    ffn_multiplier: int = 1  # FFN width = intermediate_size × this


def build(cfg, opts: LlamaOptions, vocab_size: int) -> LlamaForCausalLM:
    kv = opts.num_kv_heads or cfg.num_heads
    require_divides("model.arch_options.num_kv_heads", kv, "model.num_heads", cfg.num_heads)
    require_positive("model.arch_options.ffn_multiplier", opts.ffn_multiplier)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=kv,
        intermediate_size=cfg.intermediate_size * opts.ffn_multiplier,
        max_position_embeddings=cfg.max_position,
        tie_word_embeddings=False,
        **SPECIAL_TOKENS,
    ))


register(Architecture("llama", LlamaOptions, build, "Llama: RoPE, SwiGLU, RMSNorm; MHA/GQA/MQA by num_kv_heads",
                      kv_bytes_per_token=transformer_kv_bytes))
