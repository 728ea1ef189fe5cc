"""Turn one resolved config into one stored run record — whatever happens.

A crash inside the scenario becomes a `failed` record with its error, a
technique that cannot run here becomes `skipped` with the reason, and the
sweep goes on. Config errors are raised before anything is stored.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

import torch
from omegaconf import DictConfig, OmegaConf

from effbench import device_pinning, distributed, techniques
from effbench.artifacts import discard_partial
from effbench.config.schema import NON_IDENTITY_KEYS, RunConfig
from effbench.hardware import describe_hardware, describe_software, hardware_label, resolve_device
from effbench.metrics.record import RunRecord, Status
from effbench.models.architectures import build_architecture
from effbench.store import RecordError, ResultStore
from runners.base import RunContext, ScenarioResult

log = logging.getLogger("effbench")


class ConfigError(ValueError):
    """A config that cannot describe a run; the CLI exits with code 2."""


_RUN_ID = re.compile(r"[0-9a-f]+")

# scenario name -> module in runners/ whose `run(cfg, ctx) -> ScenarioResult` executes it
SCENARIOS = {"inference": "runners.inference", "pretrain": "runners.pretrain", "finetune": "runners.finetune",
             "serve": "runners.serve"}


def scenario_runner(name: str) -> Callable[[RunConfig, RunContext], ScenarioResult]:
    return importlib.import_module(SCENARIOS[name]).run


def config_hash(cfg: DictConfig) -> str:
    """Hash of what is measured: the resolved config minus where/why keys."""
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in NON_IDENTITY_KEYS:
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def validate(cfg: DictConfig) -> RunConfig:
    """Checks Hydra's schema cannot express; raises ConfigError naming the key."""
    if cfg.scenario.name not in SCENARIOS:
        raise ConfigError(f"scenario.name={cfg.scenario.name!r} has no runner; choose one of {', '.join(SCENARIOS)}")
    try:
        techniques.get_technique(cfg.technique.method)
    except KeyError as e:
        raise ConfigError(f"technique.method: {e.args[0]}") from None
    for key in ("batch_size", "prompt_tokens", "output_tokens", "repeats", "num_requests", "concurrency",
                "max_batch_size"):
        if key in cfg.scenario and cfg.scenario[key] < 1:
            raise ConfigError(f"scenario.{key}={cfg.scenario[key]} must be ≥ 1")
    if "output_tokens" in cfg.scenario and cfg.scenario.output_tokens < 2:
        raise ConfigError("scenario.output_tokens must be ≥ 2 (TPOT needs two tokens)")
    if "rate" in cfg.scenario and not cfg.scenario.rate > 0:
        raise ConfigError(f"scenario.rate={cfg.scenario.rate} must be > 0 requests per second")
    for key, bound in (cfg.scenario.get("slo") or {}).items():
        if bound is not None and not bound > 0:
            raise ConfigError(f"scenario.slo.{key}={bound} must be > 0 seconds, or null for no bound")
    if cfg.model.get("source") == "artifact" and not _RUN_ID.fullmatch(str(cfg.model.run_id)):
        raise ConfigError(
            f"model.run_id={cfg.model.run_id!r} is not a run id (hex digits, or a prefix of them). The command line "
            "reads an id like 710e6566 as a number (7.1e6566 → inf): quote it, model.run_id=\"'710e6566'\", "
            "or give more of the id")
    run_cfg = OmegaConf.to_object(cfg)
    spec = techniques.get_technique(run_cfg.technique.method)
    try:
        model_cfg = spec.configure_model(run_cfg.model, run_cfg.technique)
        meta = None
        if model_cfg.source == "builtin":
            # Building on the meta device allocates nothing and runs every
            # shape check a real build would: bad combinations fail here.
            with torch.device("meta"):
                meta = build_architecture(model_cfg, vocab_size=384)
        if spec.check is not None:
            # The technique's own check on that model (e.g. LoRA target modules it lacks).
            meta = meta if meta is not None else _meta_pretrained(model_cfg)
            if meta is not None:
                spec.check(meta, run_cfg.technique)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return run_cfg


def _meta_pretrained(model_cfg) -> torch.nn.Module | None:
    """A hub or artifact model built on the meta device from its config.json;
    None when that cannot be read here (the run itself reports why)."""
    from pathlib import Path

    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        if model_cfg.source == "artifact":
            record = ResultStore(model_cfg.store_url, read_only=True).get(model_cfg.run_id)
            config = AutoConfig.from_pretrained(Path(record.artifact["path"]))
        else:
            config = AutoConfig.from_pretrained(model_cfg.id, revision=model_cfg.revision,
                                                trust_remote_code=model_cfg.trust_remote_code)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=getattr(model_cfg, "trust_remote_code",
                                                                                      False))
    except Exception:  # noqa: BLE001 - unreadable here: the run's own load names the problem
        return None


def execute(cfg: DictConfig, sweep_id: str | None = None) -> RunRecord:
    """Run one pair and store its record; returns the record (new or the earlier one)."""
    run_cfg = validate(cfg)
    device = resolve_device(run_cfg.hardware.device)
    dist = distributed.from_env(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    try:  # parallel sweep jobs must not share a GPU (effbench.device_pinning)
        device_facts = device_pinning.check_current_job(device.type)
    except device_pinning.SharedDeviceError as e:
        raise ConfigError(str(e)) from None
    store = ResultStore(run_cfg.store.url)
    digest = config_hash(cfg)
    # Rank 0 decides for all ranks, so none waits in a collective the others skipped.
    done = dist.broadcast(None if run_cfg.rerun else store.find_completed(digest))
    if done:
        log.info("skip %s × %s: done as run %s (rerun=true measures again)", run_cfg.model.name,
                 run_cfg.technique.name, done[:8])
        return store.get(done)

    if run_cfg.hardware.threads:
        torch.set_num_threads(run_cfg.hardware.threads)
    torch.manual_seed(run_cfg.seed)
    run_id = dist.broadcast(uuid.uuid4().hex)
    started = time.perf_counter()
    status, error, result = Status.OK, None, ScenarioResult([])
    try:
        result = scenario_runner(run_cfg.scenario.name)(run_cfg, RunContext(run_id, device, dist))
    except techniques.UnsupportedTechnique as e:
        status, error = Status.SKIPPED, str(e)
    except Exception as e:  # noqa: BLE001 - any crash is data: store it, keep the sweep going
        status, error = Status.FAILED, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        discard_partial(run_id)
    hardware = describe_hardware(device)
    if dist.enabled:
        hardware["world_size"] = dist.world_size
    hardware.update(device_facts)
    record = RunRecord(
        id=run_id,
        created_at=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        status=status,
        axis=techniques.get_technique(run_cfg.technique.method).axis,
        scenario=run_cfg.scenario.name,
        model=result.model_name or run_cfg.model.name,
        technique=run_cfg.technique.name,
        config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        config_hash=digest,
        hardware={**hardware, "label": hardware_label(hardware)},
        software=describe_software(),
        seed=run_cfg.seed,
        metrics=result.metrics,
        artifact=result.artifact,
        error=error,
        tags=list(run_cfg.tags),
        sweep_id=sweep_id,
        duration_s=time.perf_counter() - started,
    )
    if not dist.is_main:
        return record  # one record per run, written by rank 0
    try:
        store.write(record)
    except RecordError as e:
        # E.g. a NaN figure: keep the run as a failure rather than lose it.
        record.status, record.metrics, record.artifact = Status.FAILED, [], None
        record.error = f"RecordError: the measured figures could not be stored: {e}"
        store.write(record)
    if status is Status.OK:
        log.info("stored run %s (%s × %s) in %.1f s", record.id[:8], record.model, record.technique, record.duration_s)
    else:
        log.warning("stored %s run %s (%s × %s): %s", status.value, record.id[:8], record.model, record.technique,
                    error.splitlines()[0])
    return record
