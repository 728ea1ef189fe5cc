"""Scenario runners: each module registers one scenario (runners.base.ScenarioSpec):
its config schema, the checks of its keys, and the run that measures it."""

from runners import finetune, inference, pretrain, serve  # noqa: F401  (each registers itself)
from runners.base import SCENARIOS

__all__ = ["SCENARIOS"]
