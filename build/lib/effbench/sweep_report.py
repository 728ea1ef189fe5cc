"""Hydra callback: a progress bar over a sweep's jobs and the result table at its end."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from tqdm.auto import tqdm

log = logging.getLogger("effbench")


def count_jobs(config: DictConfig) -> int:
    """Jobs in the sweep: the product of swept values (preset params, CLI wins)."""
    params = {k: f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()}
    for o in config.hydra.overrides.task:
        params[o.split("=", 1)[0]] = o
    overrides = OverridesParser.create().parse_overrides(list(params.values()))
    return math.prod(len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1 for o in overrides)


SIZE_TOLERANCE = 0.10


def size_fairness_warning(records) -> str | None:
    """Variants are compared at one parameter budget: name pairs more than 10%
    apart, leaving out techniques that say the change is intended."""
    sized = [(r, r.metric("model.parameters").value) for r in records
             if r.status.value == "ok" and any(m.name == "model.parameters" for m in r.metrics)
             and not r.config.get("technique", {}).get("size_change_intended", False)]
    if len(sized) < 2:
        return None
    (small, lo), (big, hi) = min(sized, key=lambda x: x[1]), max(sized, key=lambda x: x[1])
    if hi / lo - 1 <= SIZE_TOLERANCE:
        return None
    return (f"size fairness: {big.model} × {big.technique} has {hi:,.0f} parameters, {hi / lo - 1:.0%} more than "
            f"{small.model} × {small.technique} ({lo:,.0f}); compare them with care, or set "
            "technique.size_change_intended=true where the difference is the point")


class SweepReport(Callback):
    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __getstate__(self) -> dict:
        # submitit pickles the launcher, callbacks included, into every job: the bar
        # belongs to the launching terminal (and a pickled tqdm does not unpickle).
        return {**self.__dict__, "bar": None}

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.bar = tqdm(total=count_jobs(config), desc="sweep", unit="pair", position=0)

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if self.bar is not None:
            self.bar.update()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from effbench.hydra_app import RUN_ID_FILE
        from effbench.report import print_comparison
        from effbench.store import open_store

        if self.bar is not None:
            self.bar.close()
        ids = [p.read_text().strip() for p in sorted(Path(config.hydra.sweep.dir).glob(f"*/{RUN_ID_FILE}"),
                                                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)]
        if ids:
            store = open_store(config.store.url, read_only=True)
            records = [store.get(i) for i in ids]
            print_comparison(records)
            if warning := size_fairness_warning(records):
                log.warning(warning)
