"""Model zoo: tiny architectures built from config (offline, random init),
any transformers causal LM by hub id or local path, and GGUF files."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, ByT5Tokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

from effbench.config.schema import ArtifactModelConfig, BuiltinModelConfig, GgufModelConfig, HfModelConfig
from effbench.models.architectures import build_architecture


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str
    # Where the weights came from when a file was converted (GGUF: the file, its sha256, the dequantization)
    provenance: dict = field(default_factory=dict)


def _byte_tokenizer() -> PreTrainedTokenizerBase:
    return ByT5Tokenizer()  # byte ids + 3 specials; needs no files


# A byte-level BPE trained on the bundled corpus's train split. Its specials take
# the byte tokenizer's ids (pad 0, eos 1, unk 2: architectures.base.SPECIAL_TOKENS),
# and its alphabet is all 256 bytes, so any text encodes without loss.
BPE_SETTINGS = {"version": 1, "corpus": "pydoc", "heldout_fraction": 0.1, "vocab_size": 1024,
                "specials": ["<pad>", "</s>", "<unk>"]}
# A plain template, so chat endpoints of a server work with the tiny models.
_CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


def _train_bpe(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from effbench.data import load_corpus

    s = BPE_SETTINGS
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=s["vocab_size"], special_tokens=s["specials"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([load_corpus(s["corpus"], heldout_fraction=s["heldout_fraction"]).train_text], trainer)
    pad, eos, unk = s["specials"]
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=pad, eos_token=eos, unk_token=unk)
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(directory)


def _bpe_tokenizer() -> PreTrainedTokenizerBase:
    """A fast (Rust) tokenizer, which serving engines need: trained once (~0.5 s,
    deterministic) and cached by its settings (effbench.cache)."""
    from transformers import PreTrainedTokenizerFast

    from effbench.cache import cached_dir

    return PreTrainedTokenizerFast.from_pretrained(cached_dir("tokenizers", "bpe", BPE_SETTINGS, _train_bpe))


TOKENIZERS: dict[str, Callable[[], PreTrainedTokenizerBase]] = {"byte": _byte_tokenizer, "bpe": _bpe_tokenizer}


def build_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """`byte` (offline, the default), `bpe` (offline, a fast tokenizer a server can
    load), or `hf:<hub id or directory>` for a real vocabulary (e.g.
    hf:Qwen/Qwen2.5-0.5B, to give a paper-scale preset its embedding size)."""
    if spec.startswith("hf:"):
        return load_tokenizer(spec[3:])
    if spec not in TOKENIZERS:
        raise ValueError(f"model.tokenizer={spec!r}; choose {', '.join(TOKENIZERS)} or hf:<hub id or directory>")
    return TOKENIZERS[spec]()


def _build(cfg: BuiltinModelConfig) -> LoadedModel:
    tok = build_tokenizer(cfg.tokenizer)
    torch.manual_seed(cfg.init_seed)  # same config, same weights
    model = build_architecture(cfg, len(tok))
    return LoadedModel(model.eval(), tok, cfg.name, "builtin")


def _from_pretrained(cfg: HfModelConfig, dtype: torch.dtype) -> LoadedModel:
    kw = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    tok = load_tokenizer(cfg.id, **kw)
    model = AutoModelForCausalLM.from_pretrained(cfg.id, dtype=dtype, **kw)
    return LoadedModel(model.eval(), tok, cfg.name, "hf")


def load_tokenizer(id_or_path: str | Path, **kw) -> PreTrainedTokenizerBase:
    """A hub id through AutoTokenizer; a local directory by the class its files
    declare. For a directory AutoTokenizer prefers the class transformers
    registers for the model type beside it (mixtral: a `tokenizers` backend),
    which cannot load a byte-level tokenizer saved next to a Mixtral-family MoE."""
    config = Path(id_or_path) / "tokenizer_config.json"
    declared = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
    cls = tokenizer_class_from_name(declared) if declared else None
    return (cls or AutoTokenizer).from_pretrained(id_or_path, **kw)


def artifact_location(cfg: ArtifactModelConfig) -> tuple[Path, str]:
    """The verified directory of the artifact and the name its model runs under."""
    from effbench.artifacts import verified_path
    from effbench.store import open_store

    record = open_store(cfg.store_url, read_only=True).get(cfg.run_id)
    return verified_path(record.artifact, record.id), f"{record.model}+{record.technique}@{record.id[:8]}"


def _from_artifact(cfg: ArtifactModelConfig, dtype: torch.dtype) -> LoadedModel:
    path, name = artifact_location(cfg)
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return LoadedModel(model.eval(), tok, name, "artifact")


def _from_gguf(cfg: GgufModelConfig, dtype: torch.dtype) -> LoadedModel:
    from effbench.models.gguf import gguf_checkpoint, gguf_file

    checkpoint = gguf_checkpoint(gguf_file(cfg))
    provenance = {**checkpoint.provenance, **({"package": cfg.package} if cfg.package else {})}
    tok = load_tokenizer(checkpoint.path)
    model = AutoModelForCausalLM.from_pretrained(checkpoint.path, dtype=dtype)
    return LoadedModel(model.eval(), tok, cfg.name, "gguf", provenance)


def load_model(cfg, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """`dtype` is the precision to load hub weights in; built-in models are
    always initialised in fp32 (init schemes assume it) and cast by the technique."""
    if cfg.source == "builtin":
        return _build(cfg)
    if cfg.source == "hf":
        return _from_pretrained(cfg, dtype)
    if cfg.source == "artifact":
        return _from_artifact(cfg, dtype)
    if cfg.source == "gguf":
        return _from_gguf(cfg, dtype)
    raise ValueError(f"model.source={cfg.source!r}; choose builtin, hf, artifact or gguf")


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Total, non-embedding, active (per token: MoE uses top-k experts), and
    active non-embedding: the N of the 2·N·tokens / 6·N·tokens FLOP rules (the
    LM head is a matmul and stays in, the input embedding is a lookup and is
    left out, idle experts do no work)."""
    from effbench.models.architectures.base import active_parameters, total_parameters

    total = total_parameters(model)
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is emb
    non_embedding = total - (0 if tied else emb.numel())
    active = active_parameters(model)
    return {"total": total, "non_embedding": non_embedding, "active": active,
            "active_non_embedding": non_embedding - (total - active)}
