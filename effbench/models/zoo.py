"""Model zoo: tiny architectures built from config (offline, random init) and
any transformers causal LM by hub id or local path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, ByT5Tokenizer, PreTrainedModel, PreTrainedTokenizerBase

from effbench.config.schema import BuiltinModelConfig, HfModelConfig


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str


def _byte_tokenizer() -> PreTrainedTokenizerBase:
    return ByT5Tokenizer()  # byte ids + 3 specials; needs no files


def _llama(cfg: BuiltinModelConfig, vocab_size: int) -> PreTrainedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg.num_heads % cfg.num_kv_heads:
        raise ValueError(f"model.num_kv_heads={cfg.num_kv_heads} must divide model.num_heads={cfg.num_heads}")
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"model.num_heads={cfg.num_heads} must divide model.hidden_size={cfg.hidden_size}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


ARCHITECTURES: dict[str, Callable[[BuiltinModelConfig, int], PreTrainedModel]] = {"llama": _llama}
TOKENIZERS: dict[str, Callable[[], PreTrainedTokenizerBase]] = {"byte": _byte_tokenizer}


def _build(cfg: BuiltinModelConfig) -> LoadedModel:
    for key, table in (("arch", ARCHITECTURES), ("tokenizer", TOKENIZERS)):
        if getattr(cfg, key) not in table:
            raise ValueError(f"model.{key}={getattr(cfg, key)!r} is not built in; choose one of {', '.join(table)}")
    tok = TOKENIZERS[cfg.tokenizer]()
    torch.manual_seed(cfg.init_seed)  # same config, same weights
    model = ARCHITECTURES[cfg.arch](cfg, len(tok))
    return LoadedModel(model.eval(), tok, cfg.name, "builtin")


def _from_pretrained(cfg: HfModelConfig, dtype: torch.dtype) -> LoadedModel:
    kw = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    tok = AutoTokenizer.from_pretrained(cfg.id, **kw)
    model = AutoModelForCausalLM.from_pretrained(cfg.id, dtype=dtype, **kw)
    return LoadedModel(model.eval(), tok, cfg.name, "hf")


def load_model(cfg, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """`dtype` is the precision to load hub weights in; built-in models are
    always initialised in fp32 (init schemes assume it) and cast by the technique."""
    if cfg.source == "builtin":
        return _build(cfg)
    if cfg.source == "hf":
        return _from_pretrained(cfg, dtype)
    raise ValueError(f"model.source={cfg.source!r}; choose builtin or hf")


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Total, and non-embedding (the N of the 2·N·tokens FLOP rule: the LM head
    is a matmul and stays in, the input embedding is a lookup and is left out)."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is emb
    non_embedding = total - (0 if tied else emb.numel())
    return {"total": total, "non_embedding": non_embedding}
