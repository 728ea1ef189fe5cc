"""Registered backends (see effbench.backends.base). Only metadata here: a
backend's module is imported when a run uses it."""

from dataclasses import dataclass, field
from typing import Any, Optional

from effbench.backends.base import (BACKENDS, Backend, BackendConfig, BackendSpec, Capability, create_backend,
                                    register_backend, validate_backend)
from effbench.serving.config import Endpoint, ManagedServerConfig


@dataclass
class HfBackendConfig(BackendConfig):
    """transformers in this process: `generate()` on the model the technique produced."""

    kind: str = "hf"


@dataclass
class OpenAIBackendConfig(BackendConfig):
    """Any OpenAI-compatible server over HTTP (vLLM, SGLang, TGI, llama.cpp's
    server, `transformers serve`): a running one at `url`, or one effbench
    starts with `server.command` on the run's model and stops after the run."""

    kind: str = "openai"
    url: Optional[str] = None  # server root, e.g. http://127.0.0.1:8000 (or OpenAI's base_url, root + /v1)
    endpoint: Endpoint = Endpoint.completions
    model: Optional[str] = None  # the `model` field of each request; None = the first model the server lists
    request_timeout_s: float = 300.0  # a request without its whole answer by then is failed
    # Merged into every request body: what makes the server ignore EOS so every
    # request does the same work (transformers serve: {generation_config: '{"eos_token_id": -1}'},
    # vLLM / SGLang: {ignore_eos: true}).
    extra_body: dict[str, Any] = field(default_factory=dict)
    server: ManagedServerConfig = field(default_factory=ManagedServerConfig)


register_backend(BackendSpec("hf", HfBackendConfig, "effbench.backends.hf:HfBackend",
                             "transformers generate() in this process, every figure measurable"))
register_backend(BackendSpec("openai", OpenAIBackendConfig, "effbench.backends.openai:OpenAIBackend",
                             "an OpenAI-compatible server over HTTP, started by effbench or running at a URL",
                             validate="effbench.backends.openai:validate", scenarios=("serve",)))

__all__ = ["BACKENDS", "Backend", "BackendConfig", "BackendSpec", "Capability", "HfBackendConfig",
           "OpenAIBackendConfig", "create_backend", "register_backend", "validate_backend"]
