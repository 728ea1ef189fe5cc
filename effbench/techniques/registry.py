"""The technique registry: one module and one config file per technique.

A technique module defines its config schema (a `TechniqueConfig` subclass),
an `apply` function and the devices it runs on, and calls `register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from hydra.core.config_store import ConfigStore

from effbench.config.schema import TechniqueConfig


class UnsupportedTechnique(Exception):
    """The technique cannot run on this device: the run is stored as `skipped`."""


@dataclass(frozen=True)
class TechniqueSpec:
    method: str
    axis: str
    schema: type[TechniqueConfig]
    # (model, config, device) -> model ready for the scenario, on the device
    apply: Callable[[torch.nn.Module, TechniqueConfig, torch.device], torch.nn.Module]
    devices: tuple[str, ...] = ("cpu", "cuda")
    # dtype activations run in, for MFU's peak FLOP/s
    compute_dtype: Callable[[TechniqueConfig], torch.dtype] = lambda cfg: torch.float32
    # dtype to load hub weights in: loading a large model in fp32 only to cast it wastes memory
    load_dtype: Callable[[TechniqueConfig], torch.dtype] = lambda cfg: torch.float32
    # (model config, technique config) -> model config to build: architecture variants change it
    configure_model: Callable[[Any, TechniqueConfig], Any] = lambda model_cfg, cfg: model_cfg
    # (model built on the meta device, technique config) -> None; raises ValueError for a config that cannot
    # apply to this model (e.g. a LoRA target module it lacks): called by effbench.execute.validate
    check: Optional[Callable[[torch.nn.Module, TechniqueConfig], None]] = None
    # (model after apply, technique config, lr, weight decay) -> the optimizer over its trainable parameters
    # (e.g. LoRA+'s per-matrix learning rates); None: the scenario's AdamW over them
    optimizer: Optional[Callable[[torch.nn.Module, TechniqueConfig, float, float], torch.optim.Optimizer]] = None
    # (trained model, technique config) -> what `save_pretrained` writes as the run's artifact (e.g. PiSSA's
    # adapter converted for the original base weights); None: the model itself
    export: Optional[Callable[[torch.nn.Module, TechniqueConfig], Any]] = None

    def check_device(self, device: torch.device) -> None:
        if device.type not in self.devices:
            raise UnsupportedTechnique(
                f"technique method {self.method!r} runs on {', '.join(self.devices)}, not {device.type}"
            )


_REGISTRY: dict[str, TechniqueSpec] = {}


def register(spec: TechniqueSpec) -> TechniqueSpec:
    if spec.method in _REGISTRY:
        raise ValueError(f"technique method {spec.method!r} registered twice")
    _REGISTRY[spec.method] = spec
    ConfigStore.instance().store(group="schema/technique", name=spec.method, node=spec.schema)
    return spec


def get_technique(method: str) -> TechniqueSpec:
    try:
        return _REGISTRY[method]
    except KeyError:
        raise KeyError(f"unknown technique method {method!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def registered_methods() -> list[str]:
    return sorted(_REGISTRY)
