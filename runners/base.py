"""The contract between `effbench.execute` and a scenario.

A scenario is a registered `ScenarioSpec`: its config schema, a `validate`
that checks every key of its own (and its fit with the chosen technique)
before anything loads, and a `run` that measures. `execute` validates, then
prepares a `Subject` — what the run needs, resolved once — and hands it to
`run` with the `RunContext` (where and as whom it runs).

Scenario modules stay light to import (torch and the libraries a run needs
are imported inside `run`), so composing a config never loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from effbench.registry import Registry

if TYPE_CHECKING:
    import torch

    from effbench.config.schema import DataConfig, HardwareConfig, QualityConfig, RunConfig
    from effbench.data import Corpus
    from effbench.distributed import Distributed
    from effbench.metrics.record import Metric
    from effbench.techniques.registry import TechniqueSpec


@dataclass(frozen=True)
class StoredBaseline:
    """Quality of the same model at the baseline precision, from an earlier stored run."""

    perplexity: float
    run_id: str
    technique: str


class BaselineLookup(Protocol):
    """Read-only search of the results store for this run's baseline (MCR)."""

    def find(self, device_type: str, dtype: str) -> StoredBaseline | None: ...


@dataclass(frozen=True)
class Subject:
    """What one run measures, resolved once by `execute`."""

    scenario: Any  # the scenario's schema instance
    technique: TechniqueSpec
    technique_config: Any  # the technique's schema instance
    model: Any  # the model config as the technique configures it (architecture variants change it)
    data: DataConfig
    quality: QualityConfig
    backend: Any  # the backend's schema instance (inference and serving)
    hardware: HardwareConfig
    seed: int
    baseline: BaselineLookup | None = None

    @cached_property
    def corpus(self) -> Corpus:
        """The run's text with its fixed train / held-out split (loaded on first use)."""
        from effbench.data import load_corpus

        d = self.data
        return load_corpus(d.source, d.path, d.text_field, d.heldout_fraction, d.max_chars)

    @property
    def label(self) -> str:
        return f"{self.model.name} × {self.technique_config.name}"


@dataclass(frozen=True)
class RunContext:
    run_id: str
    device: torch.device
    dist: Distributed


@dataclass
class ScenarioResult:
    metrics: list[Metric]
    artifact: dict[str, Any] | None = None  # from effbench.artifacts.save_artifact
    model_name: str | None = None  # when the loaded model names itself (an artifact)
    # Facts about what was measured that belong on the record (e.g. a GGUF source file and its hash)
    provenance: dict[str, Any] = field(default_factory=dict)
    # Non-fatal problems the record must carry (e.g. a quality step that failed: its figures are missing)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    schema: type
    # (the whole run config) -> None; raises ConfigError/ValueError naming the key. Runs before anything loads.
    validate: Callable[[RunConfig], None]
    run: Callable[[Subject, RunContext], ScenarioResult]
    # technique axes this scenario measures (e.g. finetune: the fine-tuning axis)
    axes: tuple[str, ...]
    uses_backend: bool = False  # the model is reached through a Backend (inference, serving)
    methods: tuple[str, ...] = ()  # technique methods accepted besides those of `axes`

    def accepts(self, technique: TechniqueSpec) -> bool:
        return technique.axis in self.axes or technique.method in self.methods


SCENARIOS: Registry[ScenarioSpec] = Registry("scenario", schema_group="schema/scenario")


def register_scenario(spec: ScenarioSpec) -> ScenarioSpec:
    return SCENARIOS.register(spec.name, spec, schema=spec.schema, axes=spec.axes, methods=spec.methods)


TRAINING_PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast on a GPU that has it, else fp32


def check_training(sc: Any) -> None:
    """The keys the training scenarios (pretrain, finetune) share."""
    from effbench.errors import ConfigError

    at_least("scenario", sc, ("warmup_steps", "lr_warmup_steps"), minimum=0)
    if sc.precision not in TRAINING_PRECISIONS:
        raise ConfigError(f"scenario.precision={sc.precision!r}; choose one of {', '.join(TRAINING_PRECISIONS)}")
    if not sc.lr > 0:
        raise ConfigError(f"scenario.lr={sc.lr} must be > 0")


def at_least(section: str, obj: Any, keys: tuple[str, ...], minimum: int = 1) -> None:
    """The named integer keys are ≥ minimum (a validate helper)."""
    from effbench.errors import ConfigError

    for key in keys:
        value = getattr(obj, key)
        if value is not None and value < minimum:
            raise ConfigError(f"{section}.{key}={value} must be ≥ {minimum}")
