"""The Hydra application behind `effbench run`."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from effbench.config.schema import load_plugins

RUN_ID_FILE = "effbench_run_id"


def config_dir() -> Path:
    """$EFFBENCH_CONFIG_DIR; else the checkout's top-level configs/ (an editable install);
    else the copy a built wheel installs as the package data `effbench.configs`."""
    if os.environ.get("EFFBENCH_CONFIG_DIR"):
        return Path(os.environ["EFFBENCH_CONFIG_DIR"])
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if (checkout / "config.yaml").is_file():
        return checkout
    from importlib.resources import files

    return Path(str(files("effbench.configs")))


CONFIG_DIR = config_dir()
load_plugins()

# What the last run of this process stored: `effbench run` exits non-zero when a single run failed.
last_status: str | None = None


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> str:
    from effbench.execute import execute

    global last_status
    hc = HydraConfig.get()
    sweep_id = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None
    record = execute(cfg, sweep_id=sweep_id)
    last_status = record.status.value
    # Lets the sweep report find every pair's run, also the ones skipped as done
    # and those run by other processes (joblib, submitit).
    Path(hc.runtime.output_dir, RUN_ID_FILE).write_text(record.id)
    if hc.mode != RunMode.MULTIRUN:
        from effbench.report import print_comparison

        print_comparison([record])
    return record.id
