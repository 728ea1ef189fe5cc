"""The Hydra application behind `effbench run`."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from effbench import techniques  # noqa: F401  (registers technique schemas)
from effbench.config.schema import register_schemas

# The repo's configs/ (editable install); EFFBENCH_CONFIG_DIR points elsewhere.
CONFIG_DIR = Path(os.environ.get("EFFBENCH_CONFIG_DIR", Path(__file__).resolve().parent.parent / "configs"))
RUN_ID_FILE = "effbench_run_id"

register_schemas()


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> str:
    from effbench.execute import execute

    hc = HydraConfig.get()
    sweep_id = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None
    record = execute(cfg, sweep_id=sweep_id)
    # Lets the sweep report find every pair's run, also the ones skipped as done
    # and those run by other processes (joblib, submitit).
    Path(hc.runtime.output_dir, RUN_ID_FILE).write_text(record.id)
    return record.id
