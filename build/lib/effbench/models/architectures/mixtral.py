"""MoE: Mixtral's top-k routed SwiGLU experts in the Llama block (RoPE, RMSNorm,
untied embeddings; attention identical to Llama's).

`expert_intermediate_size` None → intermediate_size // top_k, so the FFN width
a token *uses* (top_k experts) equals the dense preset's: the MoE's active
parameters equal the dense Llama's plus the router (hidden × num_experts per
layer), while its total grows by about num_experts / top_k on the FFN. The
derived width is rounded up to a multiple of 8 (exact for every preset:
688 / 2 = 344), because transformers runs the fused experts with torch's
grouped_mm, which fails ("strides should be multiple of 16 bytes") otherwise;
an explicit unaligned width is an error.

The router's load-balancing loss is on in training (`output_router_logits`),
so `.loss` = LM loss + router_aux_loss_coef × aux loss whenever labels are
given. In transformers 5 the experts are fused 3-D parameters
(`experts.gate_up_proj` [E, 2·I, d], `experts.down_proj` [E, d, I]), not
`nn.Linear`s: tools that look for Linear modules (peft `target_modules`,
quantizers) do not see them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from transformers import MixtralConfig, MixtralForCausalLM

from effbench.models.architectures.base import (SPECIAL_TOKENS, Architecture, ArchitectureError,
                                                moe_active_parameters, register, require_divides, require_positive,
                                                transformer_kv_bytes)


# torch's grouped_mm (CPU and CUDA) needs every row stride to be a multiple of 16 bytes:
# expert width and hidden size a multiple of 8 elements covers bf16/fp16 and fp32.
ALIGN = 8


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass
class MoeOptions:
    num_experts: int = 8
    top_k: int = 2
    expert_intermediate_size: Optional[int] = None  # None: intermediate_size // top_k (active FFN = dense preset's)
    router_aux_loss_coef: float = 0.01
    num_kv_heads: Optional[int] = None  # None: MHA


def build(cfg, opts: MoeOptions, vocab_size: int) -> MixtralForCausalLM:
    require_positive("model.arch_options.num_experts", opts.num_experts)
    require_positive("model.arch_options.top_k", opts.top_k)
    if opts.top_k > opts.num_experts:
        raise ArchitectureError(f"model.arch_options.top_k={opts.top_k} must not exceed "
                                f"model.arch_options.num_experts={opts.num_experts}")
    if opts.expert_intermediate_size is not None:
        width = opts.expert_intermediate_size
        require_positive("model.arch_options.expert_intermediate_size", width)
        if width % ALIGN:
            raise ArchitectureError(f"model.arch_options.expert_intermediate_size={width} must be a multiple of "
                                    f"{ALIGN}: transformers runs the experts with grouped_mm, which needs 16-byte "
                                    "row strides (in bf16/fp16)")
    else:
        width = _round_up(max(1, cfg.intermediate_size // opts.top_k), ALIGN)
    if cfg.hidden_size % ALIGN:
        raise ArchitectureError(f"model.hidden_size={cfg.hidden_size} must be a multiple of {ALIGN} for the MoE "
                                "experts (grouped_mm needs 16-byte row strides)")
    if opts.router_aux_loss_coef < 0:
        raise ArchitectureError(f"model.arch_options.router_aux_loss_coef={opts.router_aux_loss_coef} must be >= 0")
    kv = opts.num_kv_heads or cfg.num_heads
    require_divides("model.arch_options.num_kv_heads", kv, "model.num_heads", cfg.num_heads)
    return MixtralForCausalLM(MixtralConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=kv,
        intermediate_size=width,  # per expert
        num_local_experts=opts.num_experts,
        num_experts_per_tok=opts.top_k,
        output_router_logits=True,  # aux loss in .loss while training
        router_aux_loss_coef=float(opts.router_aux_loss_coef),
        max_position_embeddings=cfg.max_position,
        tie_word_embeddings=False,
        **SPECIAL_TOKENS,
    ))


register(Architecture("mixtral", MoeOptions, build,
                      "Mixtral MoE: top-k routed SwiGLU experts, load-balancing aux loss; Llama attention",
                      # total − (num_experts − top_k)/num_experts × the fused expert tensors
                      active_params=moe_active_parameters, kv_bytes_per_token=transformer_kv_bytes))
