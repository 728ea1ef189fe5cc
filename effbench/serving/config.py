"""Config shapes for serving over HTTP: the managed server of the `openai`
backend (effbench.backends.OpenAIBackendConfig) and the serve scenario's
capacity search (runners/serve.py). Plain dataclasses that OmegaConf can
type-check (Optional, enums, lists and dicts of plain values); docs/serving.md
lists the keys with their defaults."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional


class Endpoint(str, enum.Enum):
    completions = "completions"  # POST /v1/completions: the prompt text as is
    chat = "chat"  # POST /v1/chat/completions: the prompt as one user message (the chat template adds tokens)


class CapacityLoad(str, enum.Enum):
    rate = "rate"  # Poisson arrivals per second
    concurrency = "concurrency"  # closed-loop clients


@dataclass
class ManagedServerConfig:
    """A server effbench starts, waits on and stops. command = None: connect to the backend's `url` instead."""

    # A list of arguments or one string; placeholders {python} {model} {host} {port} {dtype} {device}
    # (effbench.serving.managed.PLACEHOLDERS).
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
    """Highest load whose SLO attainment meets the scenario's `slo_target` with
    `confidence` (capacity.find_capacity)."""

    enabled: bool = False
    load: CapacityLoad = CapacityLoad.rate
    confidence: float = 0.95  # of the Wilson interval each verdict uses
    start: float = 1.0  # first load tried
    max_load: float = 256.0
    requests_per_look: int = 64
    max_looks: int = 3  # looks at one load before an undecided verdict counts as a miss
    rel_tol: float = 0.1  # bisect until (fail − pass) / pass ≤ rel_tol
