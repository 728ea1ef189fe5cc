"""Attention-free: Mamba2 (SSD state-space layers; no KV cache, a constant
per-sequence state).

A Mamba2 layer (expand 2) has about half the parameters of a transformer
layer (6·d² vs 12·d²), so, as in the Mamba papers, the model gets
`layer_multiplier` (2) × the preset's layers to match the budget. The extra
B/C projections cost 4·d·state_size per pair of layers (state_size/(3·d) of a
transformer layer): `state_size` None → hidden_size // 8 (32 at the tiny
preset), which keeps the model within ~5% of the Llama preset. head_dim 64,
one B/C group. On CPU transformers runs the reference PyTorch scan
(mamba_ssm / causal_conv1d kernels are CUDA-only): correct but slower than
attention at these sizes. (Mamba v1 is not offered: ~100× slower on CPU.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from transformers import Mamba2Config, Mamba2ForCausalLM

from effbench.models.architectures.base import SPECIAL_TOKENS, Architecture, register, require_divides, require_positive


@dataclass
class Mamba2Options:
    layer_multiplier: int = 2  # layers = preset layers × this
    expand: int = 2  # inner width = expand × hidden
    state_size: Optional[int] = None  # SSM state N; None: hidden_size // 8
    head_dim: int = 64
    n_groups: int = 1
    conv_kernel: int = 4
    chunk_size: int = 64  # SSD chunk length (a compute knob, no parameters)


def build(cfg, opts: Mamba2Options, vocab_size: int) -> Mamba2ForCausalLM:
    for key in ("layer_multiplier", "expand", "head_dim", "n_groups", "conv_kernel", "chunk_size"):
        require_positive(f"model.arch_options.{key}", getattr(opts, key))
    state = opts.state_size or max(8, cfg.hidden_size // 8)
    require_positive("model.arch_options.state_size", state)
    inner = opts.expand * cfg.hidden_size
    require_divides("model.arch_options.head_dim", opts.head_dim, "expand × model.hidden_size", inner)
    heads = inner // opts.head_dim
    require_divides("model.arch_options.n_groups", opts.n_groups, "Mamba2 heads (expand × hidden / head_dim)", heads)
    return Mamba2ForCausalLM(Mamba2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers * opts.layer_multiplier,
        expand=opts.expand,
        state_size=state,
        head_dim=opts.head_dim,
        num_heads=heads,
        n_groups=opts.n_groups,
        conv_kernel=opts.conv_kernel,
        chunk_size=opts.chunk_size,
        initializer_range=0.02,  # Mamba2Config's 0.1 starts far above ln(vocab); 0.02 as the others
        tie_word_embeddings=False,
        **SPECIAL_TOKENS,
    ))


def kv_bytes(model, dtype_bytes: int) -> int:
    return 0


def state_bytes(model, dtype_bytes: int) -> int:
    """Conv state ((inner + 2·groups·N) × kernel) + SSM state (heads × head_dim × N), per layer."""
    c = model.config
    inner = c.expand * c.hidden_size
    conv = (inner + 2 * c.n_groups * c.state_size) * c.conv_kernel
    ssm = c.num_heads * c.head_dim * c.state_size
    return c.num_hidden_layers * (conv + ssm) * dtype_bytes


register(Architecture("mamba2", Mamba2Options, build,
                      "Mamba2 (SSD): attention-free, constant recurrent state; 2× layers for an equal budget",
                      kv_bytes_per_token=kv_bytes, state_bytes=state_bytes))
