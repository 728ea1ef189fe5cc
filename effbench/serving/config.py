"""Config shapes for serving over HTTP, to plug into the serve scenario's schema
(docs/serving.md lists the keys with their defaults).

Plain dataclasses that OmegaConf can type-check (Optional, enums, lists and
dicts of plain values). Example: a managed `transformers serve` at three rates,

    backend: openai
    rates: [1, 2, 4]
    server:
      command: "{python} -m transformers.cli.transformers serve {model} --port {port} --continuous-batching"
    extra_body: {generation_config: '{"eos_token_id": -1}'}
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional


class ServeBackend(str, enum.Enum):
    in_process = "in_process"  # generate() in this process, static batching (harness.py)
    openai = "openai"  # any OpenAI-compatible server over HTTP (http_load.py)


class Endpoint(str, enum.Enum):
    completions = "completions"  # POST /v1/completions: the prompt text as is
    chat = "chat"  # POST /v1/chat/completions: the prompt as one user message (the chat template adds tokens)


class CapacityLoad(str, enum.Enum):
    rate = "rate"  # Poisson arrivals per second
    concurrency = "concurrency"  # closed-loop clients


@dataclass
class ManagedServerConfig:
    """A server effbench starts, waits on and stops. command = None: connect to `url` instead."""

    # A list of arguments or one string; placeholders {model} {host} {port} {python}.
    command: Optional[Any] = None
    ready_timeout_s: float = 300.0  # start to first healthy answer
    ready_path: str = "/health"  # polled until it answers 200
    log: Optional[str] = None  # file for the server's stdout+stderr; None = a temporary file
    host: str = "127.0.0.1"
    port: Optional[int] = None  # None = a free port
    gpus: list[int] = field(default_factory=list)  # NVML indices the server runs on (for its energy)
    env: dict[str, str] = field(default_factory=dict)  # added to the server's environment


@dataclass
class CapacityConfig:
    """Highest load whose SLO attainment meets `target` with `confidence` (capacity.find_capacity)."""

    enabled: bool = False
    load: CapacityLoad = CapacityLoad.rate
    target: float = 0.9  # SLO attainment to meet
    confidence: float = 0.95  # of the Wilson interval each verdict uses
    start: float = 1.0  # first load tried
    max_load: float = 256.0
    requests_per_look: int = 64
    max_looks: int = 3  # looks at one load before an undecided verdict counts as a miss
    rel_tol: float = 0.1  # bisect until (fail − pass) / pass ≤ rel_tol


@dataclass
class HttpServeConfig:
    """Keys the serve scenario gains for backend=openai."""

    backend: ServeBackend = ServeBackend.in_process
    url: Optional[str] = None  # server root, e.g. http://127.0.0.1:8000 (set by server.command when managed)
    endpoint: Endpoint = Endpoint.completions
    model: Optional[str] = None  # the `model` field of each request; None = the model path the server was given
    request_timeout_s: float = 300.0  # a request without its whole answer by then is failed
    # Merged into every request body: what makes the server ignore EOS so every
    # request does the same work (transformers serve: {generation_config: '{"eos_token_id": -1}'},
    # vLLM / SGLang: {ignore_eos: true}).
    extra_body: dict[str, Any] = field(default_factory=dict)
    server: ManagedServerConfig = field(default_factory=ManagedServerConfig)
    rates: list[float] = field(default_factory=list)  # a rate sweep (Poisson); empty = the scenario's rate
    capacity: CapacityConfig = field(default_factory=CapacityConfig)
