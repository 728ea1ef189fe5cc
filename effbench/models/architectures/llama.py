"""Llama family: MHA / GQA / MQA by `num_kv_heads` (None = num_heads), RoPE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from transformers import LlamaConfig, LlamaForCausalLM

from effbench.models.architectures.base import Architecture, register, require_divides


@dataclass
class LlamaOptions:
    num_kv_heads: Optional[int] = None  # None: MHA


def build(cfg, opts: LlamaOptions, vocab_size: int) -> LlamaForCausalLM:
    kv = opts.num_kv_heads or cfg.num_heads
    require_divides("model.arch_options.num_kv_heads", kv, "model.num_heads", cfg.num_heads)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=kv,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=1,
        tie_word_embeddings=False,
    ))


register(Architecture("llama", LlamaOptions, build, "Llama: RoPE, SwiGLU, RMSNorm; MHA/GQA/MQA by num_kv_heads"))
