"""MLA (multi-head latent attention) in a dense DeepSeek-V3 block.

Keys and values are projected down to one shared latent of `kv_lora_rank`
(plus a decoupled RoPE key of `qk_rope_head_dim`), and up again per head;
queries optionally through a `q_lora_rank` latent (None: a plain projection,
as DeepSeek-V2-Lite). The FFN is the preset's dense SwiGLU in every layer
(`first_k_dense_replace = num_layers`: no routed experts are built), RMSNorm,
untied embeddings: the same block as Llama except the attention.

Defaults from the preset's head_dim d_h = hidden / heads, following the paper's
ratios (d_c = 4·d_h, d_h^R = d_h/2): kv_lora_rank = 4·d_h, qk_rope_head_dim =
qk_nope_head_dim = d_h/2 (so a query·key dot product spans d_h), v_head_dim =
d_h. At the tiny preset (hidden 256, 8 heads) attention has fewer parameters
than MHA (~5% fewer in the whole model), within the ±10% budget.

KV cache: the paper caches the latent and the RoPE key, layers ×
(kv_lora_rank + qk_rope_head_dim) per token; transformers' implementation
caches the decompressed per-head K and V (layers × heads × (qk_head_dim +
v_head_dim)), so a measured cache is larger than the analytic one reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

from effbench.models.architectures.base import (SPECIAL_TOKENS, Architecture, ArchitectureError, register,
                                                require_positive)


@dataclass
class MlaOptions:
    kv_lora_rank: Optional[int] = None  # None: 4 × head_dim
    q_lora_rank: Optional[int] = None  # None: no query compression
    qk_rope_head_dim: Optional[int] = None  # None: head_dim // 2
    qk_nope_head_dim: Optional[int] = None  # None: head_dim // 2
    v_head_dim: Optional[int] = None  # None: head_dim


def resolved(cfg, opts: MlaOptions) -> dict[str, Optional[int]]:
    head_dim = cfg.hidden_size // cfg.num_heads
    out = dict(
        kv_lora_rank=opts.kv_lora_rank or 4 * head_dim,
        q_lora_rank=opts.q_lora_rank,
        qk_rope_head_dim=opts.qk_rope_head_dim or max(2, head_dim // 2),
        qk_nope_head_dim=opts.qk_nope_head_dim or max(1, head_dim // 2),
        v_head_dim=opts.v_head_dim or head_dim,
    )
    for key, value in out.items():
        if value is not None:
            require_positive(f"model.arch_options.{key}", value)
    if out["qk_rope_head_dim"] % 2:
        raise ArchitectureError(f"model.arch_options.qk_rope_head_dim={out['qk_rope_head_dim']} must be even "
                                "(RoPE rotates pairs)")
    return out


def build(cfg, opts: MlaOptions, vocab_size: int) -> DeepseekV3ForCausalLM:
    return DeepseekV3ForCausalLM(DeepseekV3Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position,
        # Dense: every layer below first_k_dense_replace gets the dense MLP, so no
        # MoE layer exists; the MoE fields only need valid values.
        first_k_dense_replace=cfg.num_layers,
        n_routed_experts=1,
        num_experts_per_tok=1,
        n_shared_experts=1,
        n_group=1,
        topk_group=1,
        moe_intermediate_size=cfg.intermediate_size,
        num_mtp_layers=0,
        tie_word_embeddings=False,
        **resolved(cfg, opts),
        **SPECIAL_TOKENS,
    ))


def kv_bytes(model, dtype_bytes: int) -> int:
    c = model.config
    return c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * dtype_bytes


register(Architecture("deepseek_v3", MlaOptions, build,
                      "DeepSeek-V3 dense: MLA (low-rank latent K/V + decoupled RoPE key), SwiGLU, RMSNorm",
                      # DeepSeek-V2 checkpoints have the same MLA fields
                      model_types=("deepseek_v3", "deepseek_v2"), kv_bytes_per_token=kv_bytes))
