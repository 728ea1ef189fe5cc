"""The inference backend seam: how the inference and serving scenarios reach a model.

A `Backend` loads the model with its technique and reports what it can count
about the model. It declares those abilities as `capabilities`; the runners
build their trackers and figures from them, so a backend that cannot count
FLOPs (an HTTP server, an ONNX session) reports no FLOPs instead of a wrong
figure. A backend with `Capability.GENERATE` runs the model in this process and
generates a fixed number of tokens with the time of every token; the `openai`
backend (effbench.backends.openai) reaches a server over HTTP instead, which
only the serve scenario drives (`BackendSpec.scenarios`).

Backends are registered like techniques: one module and one YAML each
(configs/backend/*.yaml), the module imported only when a run uses it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from effbench.registry import Registry

if TYPE_CHECKING:
    import torch

    from effbench.metrics.latency import RequestTiming
    from runners.base import Subject


class Capability(str, enum.Enum):
    GENERATE = "generate"  # greedy generate() in this process, timed per token (Backend.generate)
    FLOPS = "flops"  # counts the FLOPs of a generate call
    WEIGHT_BYTES = "weight_bytes"  # serialized size of the weights (compression family)
    PARAMETERS = "parameters"  # parameter counts
    MODULE = "module"  # a torch module in this process: perplexity, KV cache, lm-eval run on it
    PROCESS_MEMORY = "process_memory"  # the model lives in this process: its RSS / allocator is the model's


@dataclass
class BackendConfig:
    """Base of every backend's schema (registered as schema/backend/<kind>)."""

    kind: str = "hf"


class Backend(Protocol):
    kind: str
    capabilities: frozenset[Capability]
    model_name: str  # as the loaded model names itself
    tokenizer: Any

    def load(self, subject: Subject, device: torch.device) -> None:
        """Load the model and apply the subject's technique."""

    def generate(self, input_ids: torch.Tensor, output_tokens: int) -> RequestTiming:
        """(Capability.GENERATE) Greedy generation of exactly `output_tokens` per row of the
        batch (EOS cannot end it early); the time each step's tokens existed."""

    def close(self) -> None:
        """Free the model (and stop what the backend started)."""


@dataclass(frozen=True)
class BackendSpec:
    kind: str
    schema: type[BackendConfig]
    factory: str  # "module:Class", imported when a run uses the backend
    description: str
    # "module:function" taking the whole run config, imported when a run uses the backend: its
    # config-time checks (ConfigError / ValueError naming the key). Nothing may start or load there.
    validate: str | None = None
    scenarios: tuple[str, ...] = ()  # the scenarios it can run; empty: every scenario that uses a backend


BACKENDS: Registry[BackendSpec] = Registry("backend kind", schema_group="schema/backend")


def register_backend(spec: BackendSpec) -> BackendSpec:
    return BACKENDS.register(spec.kind, spec, schema=spec.schema, description=spec.description)


def _resolve(reference: str) -> Any:
    import importlib

    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def validate_backend(cfg: Any, scenario: str) -> None:
    """The backend's config-time checks for a run of `scenario` (cfg: the typed RunConfig)."""
    from effbench.errors import ConfigError

    spec = BACKENDS.get(cfg.backend.kind)
    if spec.scenarios and scenario not in spec.scenarios:
        raise ConfigError(f"backend={spec.kind} ({spec.description}) runs scenario={' / '.join(spec.scenarios)}, "
                          f"not scenario={scenario}")
    if spec.validate is not None:
        _resolve(spec.validate)(cfg)


def create_backend(config: BackendConfig, **options: Any) -> Backend:
    """The backend of `config.kind`, its module imported now; `options` are the scenario's
    settings for it (e.g. the KV-cache implementation)."""
    return _resolve(BACKENDS.get(config.kind).factory)(config, **options)
