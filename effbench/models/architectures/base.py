"""Builder registry and the option checking every family shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

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


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.name] = arch
    return arch


def parse_options(arch: Architecture, given: dict[str, Any]) -> Any:
    """Family options from config; an unknown key names the valid ones."""
    valid = {f.name for f in fields(arch.options)}
    unknown = sorted(set(given) - valid)
    if unknown:
        raise ArchitectureError(f"model.arch_options: {', '.join(unknown)} not an option of arch {arch.name!r}; "
                                f"valid: {', '.join(sorted(valid)) or '(none)'}")
    return arch.options(**given)


def require_divides(small_key: str, small: int, big_key: str, big: int) -> None:
    if small <= 0 or big % small:
        raise ArchitectureError(f"{small_key}={small} must divide {big_key}={big}")


def build_architecture(cfg: BuiltinModelConfig, vocab_size: int) -> PreTrainedModel:
    if cfg.arch not in ARCHITECTURES:
        raise ArchitectureError(f"model.arch={cfg.arch!r} is not built in; choose one of {', '.join(sorted(ARCHITECTURES))}")
    arch = ARCHITECTURES[cfg.arch]
    require_divides("model.num_heads", cfg.num_heads, "model.hidden_size", cfg.hidden_size)
    return arch.build(cfg, parse_options(arch, dict(cfg.arch_options)), vocab_size)
