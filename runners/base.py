"""The contract between `effbench.execute` and a scenario runner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from effbench.distributed import Distributed
from effbench.metrics.record import Metric


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
