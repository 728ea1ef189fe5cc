"""Registered backends (see effbench.backends.base). Only metadata here: a
backend's module is imported when a run uses it."""

from dataclasses import dataclass

from effbench.backends.base import (BACKENDS, Backend, BackendConfig, BackendSpec, Capability, create_backend,
                                    register_backend)


@dataclass
class HfBackendConfig(BackendConfig):
    """transformers in this process: `generate()` on the model the technique produced."""

    kind: str = "hf"


register_backend(BackendSpec("hf", HfBackendConfig, "effbench.backends.hf:HfBackend",
                             "transformers generate() in this process, every figure measurable"))

__all__ = ["BACKENDS", "Backend", "BackendConfig", "BackendSpec", "Capability", "HfBackendConfig", "create_backend",
           "register_backend"]
