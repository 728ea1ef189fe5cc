"""Builder registry, the option checking every family shares, and the analytic
size helpers (active parameters, KV-cache bytes per token, recurrent state)
that runners report next to what they measure.

Each family module registers one `Architecture`; its analytic formulas live in
the same module (the optional callables below), so a family is described in
one place. The helpers find the family of a built or loaded model by
`model.config.model_type` (`Architecture.model_types`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Optional

import torch
from transformers import PreTrainedModel

from effbench.config.schema import BuiltinModelConfig


class ArchitectureError(ValueError):
    """A size preset and family options that cannot make a model: a config error."""


@dataclass(frozen=True)
class Architecture:
    name: str
    options: type  # dataclass of the family's options, with defaults
    build: Callable[[BuiltinModelConfig, Any, int], PreTrainedModel]  # (size, options, vocab) -> model
    description: str
    # `config.model_type`s this family builds (and recognises in loaded checkpoints); default: (name,)
    model_types: tuple[str, ...] = ()
    # (model) -> parameters one token uses; None: all of them (dense)
    active_params: Optional[Callable[[torch.nn.Module], int]] = None
    # (model, dtype_bytes) -> analytic KV-cache bytes one token adds; None: unknown
    kv_bytes_per_token: Optional[Callable[[torch.nn.Module, int], Optional[int]]] = None
    # (model, dtype_bytes) -> constant per-sequence recurrent state bytes; None: none (attention families)
    state_bytes: Optional[Callable[[torch.nn.Module, int], int]] = None

    @property
    def types(self) -> tuple[str, ...]:
        return self.model_types or (self.name,)


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.name] = arch
    return arch


def parse_options(arch: Architecture, given: dict[str, Any]) -> Any:
    """Family options from config; an unknown key names the valid ones (in declaration order)."""
    valid = [f.name for f in fields(arch.options)]
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ArchitectureError(f"model.arch_options: {', '.join(unknown)} not an option of arch {arch.name!r}; "
                                f"valid: {', '.join(valid) or '(none)'}")
    return arch.options(**given)


def require_divides(small_key: str, small: int, big_key: str, big: int) -> None:
    if small <= 0 or big % small:
        raise ArchitectureError(f"{small_key}={small} must divide {big_key}={big}")


def require_positive(key: str, value: int | float) -> None:
    if value is None or value <= 0:
        raise ArchitectureError(f"{key}={value} must be positive")


def require_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ArchitectureError(f"{key}={value!r}; choose one of {', '.join(choices)}")


def build_architecture(cfg: BuiltinModelConfig, vocab_size: int) -> PreTrainedModel:
    if cfg.arch not in ARCHITECTURES:
        raise ArchitectureError(f"model.arch={cfg.arch!r} is not built in; choose one of {', '.join(sorted(ARCHITECTURES))}")
    arch = ARCHITECTURES[cfg.arch]
    require_divides("model.num_heads", cfg.num_heads, "model.hidden_size", cfg.hidden_size)
    return arch.build(cfg, parse_options(arch, dict(cfg.arch_options)), vocab_size)


# ---------------------------------------------------------------------------
# Analytic size helpers


def architecture_of(model: torch.nn.Module) -> Optional[Architecture]:
    """The registered family that builds `model.config.model_type`, or None."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for arch in ARCHITECTURES.values():
        if model_type in arch.types:
            return arch
    return None


def logical_numel(p: torch.Tensor) -> int:
    """Weights a parameter stands for: bitsandbytes 4-bit parameters hold two per
    byte, so their numel() counts packed bytes; their quant_state has the shape."""
    state = getattr(p, "quant_state", None)
    return state.shape.numel() if state is not None else p.numel()


def total_parameters(model: torch.nn.Module) -> int:
    return sum(logical_numel(p) for p in model.parameters())


def active_parameters(model: torch.nn.Module) -> int:
    """Parameters one token uses in a forward pass. Dense families: all of them.
    MoE: total minus the (num_experts − top_k)/num_experts share of the routed
    expert parameters (the router, shared experts, attention and embeddings
    are always active). Models of unregistered families (hub checkpoints) get
    the MoE formula when their config names experts and top-k, else count as
    dense."""
    arch = architecture_of(model)
    if arch is not None and arch.active_params is not None:
        return arch.active_params(model)
    return moe_active_parameters(model)


def moe_active_parameters(model: torch.nn.Module) -> int:
    """Total minus the idle share of routed experts: parameters named `.experts.`
    (transformers' fused 3-D expert tensors or a ModuleList of experts; shared
    experts are named `shared_expert(s)` and stay active), with num_experts from
    `num_local_experts` / `num_experts` / `n_routed_experts` and top-k from
    `num_experts_per_tok`. Equals the total when either is missing."""
    c = getattr(model, "config", None)
    experts_n = next((v for k in ("num_local_experts", "num_experts", "n_routed_experts")
                      if isinstance(v := getattr(c, k, None), int) and v > 0), None)
    top_k = getattr(c, "num_experts_per_tok", None)
    total = total_parameters(model)
    if not experts_n or not isinstance(top_k, int) or top_k >= experts_n:
        return total
    routed = sum(logical_numel(p) for name, p in model.named_parameters() if ".experts." in name)
    return total - routed * (experts_n - top_k) // experts_n


def kv_cache_bytes_per_token(model: torch.nn.Module, dtype_bytes: int) -> Optional[int]:
    """Analytic bytes one token adds to the inference cache (per sequence, all layers).

    - MHA/GQA/MQA transformers (Llama, Mixtral, GPT-NeoX, GPT-2, Falcon):
      2 × layers × kv_heads × head_dim × bytes.
    - MLA (DeepSeek-V3) as the paper defines it: layers × (kv_lora_rank +
      qk_rope_head_dim) × bytes. transformers' implementation caches the
      decompressed per-head K and V instead, so a *measured* cache is larger
      (layers × heads × (qk_nope + qk_rope + v_head_dim) × bytes).
    - NSA: what `SparseAttention` caches: the full rotated K/V plus one
      compressed K/V per `compress_block_sliding_stride` tokens (amortised).
    - Mamba2, RWKV: 0 (their state is constant; see `recurrent_state_bytes`).

    Unknown families: the generic transformer formula from the config when it
    has the usual fields, else None.
    """
    arch = architecture_of(model)
    if arch is not None and arch.kv_bytes_per_token is not None:
        return arch.kv_bytes_per_token(model, dtype_bytes)
    return _generic_kv_bytes(getattr(model, "config", None), dtype_bytes)


def recurrent_state_bytes(model: torch.nn.Module, dtype_bytes: int) -> int:
    """Constant per-sequence state of recurrent families (Mamba2 conv + SSM
    state, RWKV's five per-layer vectors); 0 for attention families."""
    arch = architecture_of(model)
    if arch is not None and arch.state_bytes is not None:
        return arch.state_bytes(model, dtype_bytes)
    return 0


def mha_kv_bytes(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """K and V, one vector per KV head per layer."""
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def _generic_kv_bytes(config: Any, dtype_bytes: int) -> Optional[int]:
    try:
        layers = config.num_hidden_layers
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    except AttributeError:
        return None
    return mha_kv_bytes(layers, kv, head_dim, dtype_bytes)


def transformer_kv_bytes(model: torch.nn.Module, dtype_bytes: int) -> int:
    """Llama-style configs: num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim."""
    kv = _generic_kv_bytes(model.config, dtype_bytes)
    assert kv is not None
    return kv


# The byte tokenizer's specials (ByT5: pad=0, eos=1, unk=2; no BOS). Every
# family sets them, since some configs default to ids outside a small vocab.
SPECIAL_TOKENS = dict(pad_token_id=0, bos_token_id=None, eos_token_id=1)
