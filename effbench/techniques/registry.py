"""The technique registry: one module and one config file per technique.

A technique module defines its config schema (a `TechniqueConfig` subclass),
an `apply` function and the devices it runs on, and calls `register`. Modules
stay light to import — their libraries (torch, peft, bitsandbytes, torchao …)
are imported inside the functions — so composing a config never loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from effbench.config.schema import DType, TechniqueConfig
from effbench.registry import Registry

if TYPE_CHECKING:
    import torch


class UnsupportedTechnique(Exception):
    """The technique cannot run on this device: the run is stored as `skipped`."""


def torch_dtype(dtype: DType | str) -> torch.dtype:
    import torch

    return getattr(torch, DType(dtype).value)


def _float32(cfg: TechniqueConfig) -> torch.dtype:
    return torch_dtype(DType.float32)


@dataclass(frozen=True)
class TechniqueSpec:
    method: str
    axis: str
    schema: type[TechniqueConfig]
    # (model, config, device) -> model ready for the scenario, on the device
    apply: Callable[[torch.nn.Module, TechniqueConfig, torch.device], torch.nn.Module]
    devices: tuple[str, ...] = ("cpu", "cuda")
    # dtype activations run in, for MFU's peak FLOP/s
    compute_dtype: Callable[[TechniqueConfig], torch.dtype] = _float32
    # dtype to load hub weights in: loading a large model in fp32 only to cast it wastes memory
    load_dtype: Callable[[TechniqueConfig], torch.dtype] = _float32
    # (model config, technique config) -> model config to build: architecture variants change it
    configure_model: Callable[[Any, TechniqueConfig], Any] = lambda model_cfg, cfg: model_cfg
    # (model built on the meta device, technique config) -> None; raises ValueError for a config that cannot
    # apply to this model (e.g. a LoRA target module it lacks): called when the run is validated
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


TECHNIQUES: Registry[TechniqueSpec] = Registry("technique method", schema_group="schema/technique")


def register(spec: TechniqueSpec) -> TechniqueSpec:
    return TECHNIQUES.register(spec.method, spec, schema=spec.schema, axis=spec.axis)


def get_technique(method: str) -> TechniqueSpec:
    return TECHNIQUES.get(method)


def registered_methods() -> list[str]:
    return TECHNIQUES.names()
