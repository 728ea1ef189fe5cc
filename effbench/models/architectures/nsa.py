"""NSA (Native Sparse Attention, Yuan et al. 2025) in a Llama-like decoder.

Attention is `native_sparse_attention_pytorch.SparseAttention` (pure PyTorch,
runs on CPU): three branches per query — attention over compressed blocks
(an MLP pools each `compress_block_size` window of K/V, sliding by
`compress_block_sliding_stride`), attention over the `num_selected_blocks`
blocks of `selection_block_size` tokens the compressed scores rank highest,
and a `sliding_window_size` local window — mixed by a learned sigmoid gate.
The block around it is Llama's: pre-RMSNorm, SwiGLU MLP of
intermediate_size, untied embeddings; positions are the module's own RoPE.

The defaults scale the paper's 64k-context settings (window 512, l = 32,
d = 16, l' = 64, n = 16) down to contexts of a few hundred tokens: window 64,
l = 8, d = 4, l' = 16, n = 4. The compression MLPs (one for K, one for V) have
compress_block_size·head_dim inputs; at `compress_mlp_expand_factor` 1 (the
library's default) they add ~19% parameters at the tiny preset, so the
default hidden width is 0.25 × their input (the paper leaves the MLP's width
open), which keeps NSA ~6% above the Llama preset.

A transformers model of its own (`EffbenchNSAConfig`, model_type
`effbench_nsa`, registered with AutoConfig / AutoModelForCausalLM), so saved
checkpoints reload by `from_pretrained`. `generate()` works (greedy, sampling,
beam search) through the module's own decode cache (`NSACache`: per layer the
rotated K/V, the compressed K/V and the running window not yet compressed),
which reproduces the full forward's outputs. No padding: an attention_mask
with zeros raises (the module has no masking of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from effbench.models.architectures.base import (SPECIAL_TOKENS, Architecture, ArchitectureError, register,
                                                require_divides, require_positive)

if TYPE_CHECKING:
    from native_sparse_attention_pytorch import SparseAttention

# ---------------------------------------------------------------------------
# transformers classes


class EffbenchNSAConfig(PreTrainedConfig):
    model_type = "effbench_nsa"

    vocab_size: int = 384
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 1024
    sliding_window_size: int = 64
    compress_block_size: int = 8
    compress_block_sliding_stride: int = 4
    selection_block_size: int = 16
    num_selected_blocks: int = 4
    compress_mlp_expand_factor: float | int = 0.25
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 1
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class NSACache:
    """Per-layer decode state of `SparseAttention`: ((k, v), ((ck, cv), (run_k, run_v)))."""

    def __init__(self, layers: list[Any], seq_len: int):
        self.layers = layers
        self.seq_len = seq_len

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seq_len

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        def pick(t):
            if isinstance(t, torch.Tensor):
                return t.index_select(0, beam_idx.to(t.device))
            return tuple(pick(x) for x in t)

        self.layers = [pick(layer) for layer in self.layers]


@dataclass
class NSACausalLMOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    cache: Optional[NSACache] = None


class NSAMLP(nn.Module):
    def __init__(self, config: EffbenchNSAConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def _sparse_attention(config: EffbenchNSAConfig) -> SparseAttention:
    # Imported here: the library (and einx) costs every other run's start-up if imported with the registry.
    from native_sparse_attention_pytorch import SparseAttention
    from rotary_embedding_torch import RotaryEmbedding

    attn = SparseAttention(
        dim=config.hidden_size,
        dim_head=config.head_dim,
        heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads,
        sliding_window_size=config.sliding_window_size,
        compress_block_size=config.compress_block_size,
        compress_block_sliding_stride=config.compress_block_sliding_stride,
        selection_block_size=config.selection_block_size,
        num_selected_blocks=config.num_selected_blocks,
        compress_mlp_expand_factor=float(config.compress_mlp_expand_factor),
        causal=True,
        norm=False,  # the decoder layer's own pre-RMSNorm, as Llama
    )
    # The library's RoPE pre-allocates an 8192-position table per layer; size it to the model's context.
    rotary = RotaryEmbedding(config.head_dim, cache_max_seq_len=config.max_position_embeddings)
    # Its fixed frequencies are a frozen nn.Parameter, which transformers' loader turns trainable
    # again; as a (non-saved) buffer they stay fixed, uncounted and out of checkpoints.
    freqs = rotary.freqs.detach().clone()
    del rotary.freqs
    rotary.register_buffer("freqs", freqs, persistent=False)
    attn.rotary_emb = rotary
    return attn


class NSADecoderLayer(nn.Module):
    def __init__(self, config: EffbenchNSAConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = _sparse_attention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = NSAMLP(config)

    def forward(self, hidden: torch.Tensor, cache: Any = None, use_cache: bool = False):
        x = self.input_layernorm(hidden)
        layer_cache = None
        if use_cache:
            out, layer_cache = self.self_attn(x, cache=cache, return_cache=True)
        else:
            out = self.self_attn(x)
        hidden = hidden + out
        hidden = hidden + self.mlp(self.post_attention_layernorm(hidden))
        return hidden, layer_cache


class EffbenchNSAPreTrainedModel(PreTrainedModel):
    config_class = EffbenchNSAConfig
    base_model_prefix = "model"
    _no_split_modules = ["NSADecoderLayer"]
    _is_stateful = True  # the decode cache cannot be cropped: no assisted generation

    def _init_weights(self, module):
        from native_sparse_attention_pytorch import SparseAttention
        from rotary_embedding_torch import RotaryEmbedding

        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, RotaryEmbedding):
            dim = module.freqs.shape[0] * 2
            init.copy_(module.freqs, 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)))
        elif isinstance(module, SparseAttention):
            # The module's own init (children are initialised first): zero memory K/V and
            # intra-block positions, and the strategy gate starting on the sliding window.
            init.zeros_(module.compress_mem_kv)
            init.zeros_(module.k_intrablock_positions)
            init.zeros_(module.v_intrablock_positions)
            gate = module.to_strategy_combine[0]
            init.zeros_(gate.weight)
            init.copy_(gate.bias, torch.tensor([-2.0, -2.0, 2.0] * module.heads))


class EffbenchNSAModel(EffbenchNSAPreTrainedModel):
    def __init__(self, config: EffbenchNSAConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList([NSADecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids: torch.LongTensor, cache: Optional[NSACache] = None, use_cache: bool = False):
        hidden = self.embed_tokens(input_ids)
        if cache is None:
            new = []
            for layer in self.layers:
                hidden, layer_cache = layer(hidden, use_cache=use_cache)
                new.append(layer_cache)
            return self.norm(hidden), (NSACache(new, input_ids.shape[1]) if use_cache else None)
        # Decoding: the module's cached path takes one token at a time.
        outs = []
        for t in range(input_ids.shape[1]):
            h = hidden[:, t : t + 1]
            for i, layer in enumerate(self.layers):
                h, cache.layers[i] = layer(h, cache=cache.layers[i], use_cache=True)
            cache.seq_len += 1
            outs.append(h)
        return self.norm(torch.cat(outs, dim=1)), cache


class EffbenchNSAForCausalLM(EffbenchNSAPreTrainedModel, GenerationMixin):
    def __init__(self, config: EffbenchNSAConfig):
        super().__init__(config)
        self.model = EffbenchNSAModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is the module's own (NSACache), created by the prefill forward

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        cache: Optional[NSACache] = None,
        use_cache: Optional[bool] = None,
        labels: Optional[torch.LongTensor] = None,
        logits_to_keep: int = 0,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> NSACausalLMOutput:
        if input_ids is None:
            raise ValueError("EffbenchNSAForCausalLM needs input_ids (inputs_embeds are not supported)")
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("EffbenchNSAForCausalLM does not take inputs_embeds")
        if cache is None and attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("NSA has no attention masking: padded batches (attention_mask with zeros) are not "
                             "supported; use unpadded, equal-length sequences")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        hidden, cache = self.model(input_ids, cache=cache, use_cache=use_cache or cache is not None)
        keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        logits = self.lm_head(hidden[:, keep])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return NSACausalLMOutput(loss=loss, logits=logits, cache=cache)


AutoConfig.register(EffbenchNSAConfig.model_type, EffbenchNSAConfig)
AutoModelForCausalLM.register(EffbenchNSAConfig, EffbenchNSAForCausalLM)


# ---------------------------------------------------------------------------
# Family


@dataclass
class NsaOptions:
    sliding_window_size: int = 64
    compress_block_size: int = 8
    compress_block_sliding_stride: int = 4
    selection_block_size: int = 16
    num_selected_blocks: int = 4
    num_kv_heads: Optional[int] = None  # None: num_heads (MHA, as the Llama preset)
    compress_mlp_expand_factor: float = 0.25  # compression MLP hidden = this × compress_block_size × head_dim


def build(cfg, opts: NsaOptions, vocab_size: int) -> EffbenchNSAForCausalLM:
    key = "model.arch_options."
    for name in ("sliding_window_size", "compress_block_size", "compress_block_sliding_stride",
                 "selection_block_size", "num_selected_blocks", "compress_mlp_expand_factor"):
        require_positive(key + name, getattr(opts, name))
    if opts.compress_block_sliding_stride > opts.compress_block_size:
        raise ArchitectureError(f"{key}compress_block_sliding_stride={opts.compress_block_sliding_stride} must not "
                                f"exceed {key}compress_block_size={opts.compress_block_size}")
    require_divides(key + "compress_block_sliding_stride", opts.compress_block_sliding_stride,
                    key + "selection_block_size", opts.selection_block_size)
    kv = opts.num_kv_heads or cfg.num_heads
    require_divides(key + "num_kv_heads", kv, "model.num_heads", cfg.num_heads)
    head_dim = cfg.hidden_size // cfg.num_heads
    if int(opts.compress_mlp_expand_factor * opts.compress_block_size * head_dim) < 1:
        raise ArchitectureError(f"{key}compress_mlp_expand_factor={opts.compress_mlp_expand_factor} leaves the "
                                "compression MLP no hidden units")
    return EffbenchNSAForCausalLM(EffbenchNSAConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=kv,
        max_position_embeddings=cfg.max_position,
        sliding_window_size=opts.sliding_window_size,
        compress_block_size=opts.compress_block_size,
        compress_block_sliding_stride=opts.compress_block_sliding_stride,
        selection_block_size=opts.selection_block_size,
        num_selected_blocks=opts.num_selected_blocks,
        compress_mlp_expand_factor=float(opts.compress_mlp_expand_factor),
        tie_word_embeddings=False,
        **SPECIAL_TOKENS,
    ))


def kv_bytes(model, dtype_bytes: int) -> int:
    """What `SparseAttention` caches, amortised per token: the full rotated K and V
    (2 × kv_heads × head_dim per layer) plus one compressed K and V per
    `compress_block_sliding_stride` tokens. (The running window awaiting
    compression, < compress_block_size tokens, is a constant on top.)"""
    c = model.config
    per_layer = 2 * c.num_key_value_heads * c.head_dim
    return round(c.num_hidden_layers * per_layer * dtype_bytes * (1 + 1 / c.compress_block_sliding_stride))


register(Architecture("nsa", NsaOptions, build,
                      "Native Sparse Attention (compressed + selected + sliding-window branches) in a Llama block",
                      model_types=(EffbenchNSAConfig.model_type,), kv_bytes_per_token=kv_bytes))
