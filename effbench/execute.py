"""Turn one resolved config into one stored run record — whatever happens.

A crash inside the scenario becomes a `failed` record with its error, a
technique that cannot run here becomes `skipped` with the reason, and the
sweep goes on. Config errors are raised before anything is stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

import torch
from omegaconf import DictConfig, OmegaConf

from effbench import techniques
from effbench.config.schema import NON_IDENTITY_KEYS, RunConfig
from effbench.hardware import describe_hardware, describe_software, hardware_label, resolve_device
from effbench.metrics.record import Metric, RunRecord, Status
from effbench.store import RecordError, ResultStore

log = logging.getLogger("effbench")


class ConfigError(ValueError):
    """A config that cannot describe a run; the CLI exits with code 2."""


def scenario_runners() -> dict[str, Callable[[RunConfig], list[Metric]]]:
    from runners import inference

    return {"inference": inference.run}


def config_hash(cfg: DictConfig) -> str:
    """Hash of what is measured: the resolved config minus where/why keys."""
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in NON_IDENTITY_KEYS:
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def validate(cfg: DictConfig) -> RunConfig:
    """Checks Hydra's schema cannot express; raises ConfigError naming the key."""
    runners = scenario_runners()
    if cfg.scenario.name not in runners:
        raise ConfigError(f"scenario.name={cfg.scenario.name!r} has no runner; choose one of {', '.join(runners)}")
    try:
        techniques.get_technique(cfg.technique.method)
    except KeyError as e:
        raise ConfigError(f"technique.method: {e.args[0]}") from None
    for key in ("batch_size", "prompt_tokens", "output_tokens", "repeats"):
        if key in cfg.scenario and cfg.scenario[key] < 1:
            raise ConfigError(f"scenario.{key}={cfg.scenario[key]} must be ≥ 1")
    if "output_tokens" in cfg.scenario and cfg.scenario.output_tokens < 2:
        raise ConfigError("scenario.output_tokens must be ≥ 2 (TPOT needs two tokens)")
    return OmegaConf.to_object(cfg)


def execute(cfg: DictConfig, sweep_id: str | None = None) -> RunRecord:
    """Run one pair and store its record; returns the record (new or the earlier one)."""
    run_cfg = validate(cfg)
    store = ResultStore(run_cfg.store.url)
    digest = config_hash(cfg)
    if not run_cfg.rerun and (done := store.find_completed(digest)):
        log.info("skip %s × %s: done as run %s (rerun=true measures again)", run_cfg.model.name,
                 run_cfg.technique.name, done[:8])
        return store.get(done)

    if run_cfg.hardware.threads:
        torch.set_num_threads(run_cfg.hardware.threads)
    torch.manual_seed(run_cfg.seed)
    started = time.perf_counter()
    status, error, metrics = Status.OK, None, []
    device = torch.device("cpu")
    try:
        device = resolve_device(run_cfg.hardware.device)
        metrics = scenario_runners()[run_cfg.scenario.name](run_cfg)
    except techniques.UnsupportedTechnique as e:
        status, error = Status.SKIPPED, str(e)
    except Exception as e:  # noqa: BLE001 - any crash is data: store it, keep the sweep going
        status, error = Status.FAILED, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        metrics = []
    hardware = describe_hardware(device)
    record = RunRecord(
        id=uuid.uuid4().hex,
        created_at=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        status=status,
        axis=techniques.get_technique(run_cfg.technique.method).axis,
        scenario=run_cfg.scenario.name,
        model=run_cfg.model.name,
        technique=run_cfg.technique.name,
        config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        config_hash=digest,
        hardware={**hardware, "label": hardware_label(hardware)},
        software=describe_software(),
        seed=run_cfg.seed,
        metrics=metrics,
        error=error,
        tags=list(run_cfg.tags),
        sweep_id=sweep_id,
        duration_s=time.perf_counter() - started,
    )
    try:
        store.write(record)
    except RecordError as e:
        # E.g. a NaN figure: keep the run as a failure rather than lose it.
        record.status, record.metrics = Status.FAILED, []
        record.error = f"RecordError: the measured figures could not be stored: {e}"
        store.write(record)
    if status is Status.OK:
        log.info("stored run %s (%s × %s) in %.1f s", record.id[:8], record.model, record.technique, record.duration_s)
    else:
        log.warning("stored %s run %s (%s × %s): %s", status.value, record.id[:8], record.model, record.technique,
                    error.splitlines()[0])
    return record
