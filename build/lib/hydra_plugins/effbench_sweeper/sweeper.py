"""`hydra/sweeper=effbench` (effbench's default): Hydra's basic sweeper, but every
job's config is composed and validated by effbench (effbench.execute.prepare)
before the first job starts, whatever the launcher. A sweep with bad jobs stops
within seconds, listing each bad job's overrides with its error, and starts none.
"""

# No `from __future__ import annotations`: Hydra execs plugin modules before they are in
# sys.modules, and dataclasses then cannot resolve string annotations.
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser

from effbench.errors import ConfigError


@dataclass
class EffbenchSweeperConf:
    _target_: str = "hydra_plugins.effbench_sweeper.sweeper.EffbenchSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="effbench", node=EffbenchSweeperConf, provider="effbench")


class SweepConfigError(ConfigError):
    """One or more jobs of a sweep cannot run; the message lists them all."""


class EffbenchSweeper(BasicSweeper):
    def sweep(self, arguments: List[str]) -> Any:
        from omegaconf import open_dict

        from effbench.execute import prepare

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        jobs = [job for batch in self.split_arguments(overrides, None) for job in batch]
        problems: Dict[str, List[str]] = {}
        for job in jobs:
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
                with open_dict(cfg):
                    del cfg["hydra"]  # the job's config as the task function sees it
                prepare(cfg)
            except Exception as e:  # noqa: BLE001 - every job's problem is reported, then none runs
                message = str(e).split("\nConfig search path:")[0].strip()
                problems.setdefault(message, []).append(" ".join(job))
        if problems:
            lines = [f"{len(jobs)} jobs in the sweep; {sum(map(len, problems.values()))} cannot run, so none was "
                     "started:"]
            for message, bad in problems.items():
                which = "every job" if len(bad) == len(jobs) else "; ".join(bad[:5]) + (
                    f"; … ({len(bad)} jobs)" if len(bad) > 5 else "")
                lines.append(f"- {which}:\n    {message}")
            raise SweepConfigError("\n".join(lines))
        return super().sweep(arguments)
