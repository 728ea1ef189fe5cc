"""Relative positions: Falcon's block with `position: rope | alibi`.

Falcon is the one transformers family that offers both RoPE and ALiBi
(`alibi=True`) on the same block, so the two relative schemes differ in
nothing else; configured as a GPT-2-style block (see `gpt2.py`) it also
matches `gpt2.py`'s learned/sinusoidal variants parameter for parameter (less
their `wpe` table). Bloom/MPT would give ALiBi too, but with a different
block (Bloom adds an embedding LayerNorm; MPT has no biases), confounding the
comparison. ALiBi adds no parameters: the four position variants differ only
by GPT-2's max_position × hidden table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from transformers import FalconConfig, FalconForCausalLM

from effbench.models.architectures.base import SPECIAL_TOKENS, Architecture, mha_kv_bytes, register, require_choice
from effbench.models.architectures.gpt2 import ffn_size


@dataclass
class FalconOptions:
    position: str = "rope"  # rope | alibi
    ffn_size: Optional[int] = None  # None: 3/2 × intermediate_size (SwiGLU-equal parameters)


def build(cfg, opts: FalconOptions, vocab_size: int) -> FalconForCausalLM:
    require_choice("model.arch_options.position", opts.position, ("rope", "alibi"))
    return FalconForCausalLM(FalconConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_kv_heads=cfg.num_heads,
        multi_query=False,
        new_decoder_architecture=False,
        parallel_attn=False,  # sequential attention → MLP, as GPT-2
        bias=True,
        activation="gelu",
        ffn_hidden_size=ffn_size(cfg, opts.ffn_size),
        alibi=opts.position == "alibi",
        max_position_embeddings=cfg.max_position,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        **SPECIAL_TOKENS,
    ))


def kv_bytes(model, dtype_bytes: int) -> int:
    c = model.config
    if c.new_decoder_architecture:
        kv = c.num_kv_heads
    else:
        kv = 1 if c.multi_query else c.num_attention_heads
    return mha_kv_bytes(c.num_hidden_layers, kv, c.hidden_size // c.num_attention_heads, dtype_bytes)


register(Architecture("falcon", FalconOptions, build,
                      "Falcon block as GPT-2-style (LayerNorm, biases, GELU MLP); position: rope | alibi",
                      kv_bytes_per_token=kv_bytes))
