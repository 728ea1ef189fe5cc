"""Turn one resolved config into one stored run record — whatever happens.

Every check of the config runs first (`validate`: the scenario's own keys, the
technique's fit with the scenario and the model, paths, the store URL), so bad
input exits 2 before anything loads or is stored. Then `prepare` resolves what
the run needs once (the `Subject`), the scenario runs, and the record is
written: a crash inside the scenario becomes a `failed` record with its error,
a technique that cannot run here becomes `skipped` with the reason, and the
sweep goes on.

Nothing heavy is imported at module level: `import effbench.execute` is cheap,
torch and the technique's libraries load when a run needs them.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
import traceback
import uuid
from dataclasses import dataclass, is_dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from effbench import quiet
from effbench.config.schema import NON_IDENTITY_KEYS, RunConfig, load_plugins
from effbench.errors import ConfigError
from effbench.registry import UnknownName

if TYPE_CHECKING:
    from effbench.metrics.record import RunRecord
    from runners.base import ScenarioSpec, Subject

__all__ = ["ConfigError", "config_hash", "execute", "prepare", "validate"]

log = logging.getLogger("effbench")
load_plugins()
quiet.install()


def config_hash(cfg: DictConfig) -> str:
    """Hash of what is measured: the resolved config minus where/why keys."""
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in NON_IDENTITY_KEYS:
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _plain(node: Any) -> Any:
    """A schema instance as the plain dict the stored config holds."""
    if is_dataclass(node):
        return OmegaConf.to_container(OmegaConf.structured(node), resolve=True, enum_to_str=True)
    return node


@dataclass(frozen=True)
class Plan:
    """A validated run: its typed config, the scenario spec and the subject it measures."""

    config: RunConfig
    scenario: ScenarioSpec
    subject: Subject


def _typed(cfg: DictConfig) -> RunConfig:
    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key} has no value: set it on the command line, e.g. {e.full_key}=...") from None
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0]) from None


def validate(cfg: DictConfig) -> RunConfig:
    """Every check that Hydra's schema cannot express; raises ConfigError naming the key."""
    return prepare(cfg).config


def prepare(cfg: DictConfig) -> Plan:
    """Validate the config and resolve the subject; ConfigError for anything that cannot run."""
    from effbench.backends import BACKENDS, validate_backend
    from effbench.data.corpus import check_data
    from effbench.models.checks import check_model
    from effbench.store.base import check_url
    from effbench.techniques import TECHNIQUES
    from runners import SCENARIOS
    from runners.base import Subject
    from runners.baseline import StoreBaselineLookup

    run_cfg = _typed(cfg)
    try:
        scenario = SCENARIOS.get(run_cfg.scenario.name)
        technique = TECHNIQUES.get(run_cfg.technique.method)
        BACKENDS.get(run_cfg.backend.kind)
    except UnknownName as e:
        raise ConfigError(str(e)) from None
    if not scenario.accepts(technique):
        fitting = ", ".join(e.name for e in TECHNIQUES if scenario.accepts(e.target))
        raise ConfigError(f"scenario={scenario.name} measures the {' / '.join(scenario.axes)} axis: "
                          f"technique.method={technique.method!r} is on the {technique.axis} axis; choose a technique "
                          f"of method {fitting}")
    if not scenario.uses_backend and run_cfg.backend.kind != "hf":
        raise ConfigError(f"backend={run_cfg.backend.kind}: scenario={scenario.name} trains in this process; "
                          "only the inference and serve scenarios take another backend")
    store_url = check_url(run_cfg.store.url)
    ghz = run_cfg.hardware.cpu_max_ghz
    if ghz is not None and not 0 < ghz < 100:
        raise ConfigError(f"hardware.cpu_max_ghz={ghz}: the CPU's max boost clock in GHz, e.g. 3.7")
    try:
        scenario.validate(run_cfg)
        check_data(run_cfg.data.source, run_cfg.data.path, run_cfg.data.heldout_fraction)
        model_cfg = technique.configure_model(run_cfg.model, run_cfg.technique)
        # Checked for every backend: a server's model is the run's model (its tokenizer makes the prompts).
        meta = check_model(model_cfg)
        if technique.check is not None and meta is not None:
            # The technique's own check on that model (e.g. LoRA target modules it lacks).
            technique.check(meta, run_cfg.technique)
        if run_cfg.quality.tasks:
            from effbench.quality.lm_eval_runner import task_manager

            task_manager(run_cfg.quality)  # every task name known (lm-eval's registry, the offline suite, yours)
        validate_backend(run_cfg, scenario.name)  # last: it may ask a server's URL whether it is up
    except ValueError as e:  # ConfigError included
        raise ConfigError(str(e)) from None
    baseline = None
    if model_cfg == run_cfg.model:  # an architecture variant has no stored baseline of its own model
        baseline = StoreBaselineLookup(store_url, _plain(run_cfg.model), _plain(run_cfg.data),
                                       _plain(run_cfg.scenario))
    subject = Subject(scenario=run_cfg.scenario, technique=technique, technique_config=run_cfg.technique,
                      model=model_cfg, data=run_cfg.data, quality=run_cfg.quality, backend=run_cfg.backend,
                      hardware=run_cfg.hardware, seed=run_cfg.seed, baseline=baseline)
    return Plan(run_cfg, scenario, subject)


def execute(cfg: DictConfig, sweep_id: str | None = None) -> RunRecord:
    """Run one pair and store its record; returns the record (new or the earlier one)."""
    import torch

    from effbench import device_pinning, distributed
    from effbench.artifacts import discard_partial
    from effbench.hardware import describe_hardware, describe_software, hardware_label, resolve_device
    from effbench.metrics.record import RunRecord, Status
    from effbench.store import RecordError, open_store
    from effbench.techniques import UnsupportedTechnique
    from runners.base import RunContext, ScenarioResult

    plan = prepare(cfg)
    run_cfg, subject = plan.config, plan.subject
    device = resolve_device(run_cfg.hardware.device)
    dist = distributed.from_env(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    try:  # parallel sweep jobs must not share a GPU (effbench.device_pinning)
        device_facts = device_pinning.check_current_job(device.type)
    except device_pinning.SharedDeviceError as e:
        raise ConfigError(str(e)) from None
    store = open_store(run_cfg.store.url)
    digest = config_hash(cfg)
    # Rank 0 decides for all ranks, so none waits in a collective the others skipped.
    done = dist.broadcast(None if run_cfg.rerun else store.find_completed(digest))
    if done:
        log.info("skip %s: done as run %s (rerun=true measures again)", subject.label, done[:8])
        return store.get(done)

    if run_cfg.hardware.threads:
        torch.set_num_threads(run_cfg.hardware.threads)
    torch.manual_seed(run_cfg.seed)
    run_id = dist.broadcast(uuid.uuid4().hex)
    # Every library is imported by now: move its ~half a million objects out of the collector's sight, so
    # neither the run's collections nor the interpreter's teardown walk them again (seconds per process).
    gc.freeze()
    started = time.perf_counter()
    status, error, result = Status.OK, None, ScenarioResult([])
    try:
        result = plan.scenario.run(subject, RunContext(run_id, device, dist))
    except UnsupportedTechnique as e:
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
        axis=subject.technique.axis,
        scenario=plan.scenario.name,
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
        warnings=list(result.warnings),
        provenance=dict(result.provenance),
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
        for warning in record.warnings:
            log.warning("run %s: %s", record.id[:8], warning)
    else:
        log.warning("stored %s run %s (%s × %s): %s", status.value, record.id[:8], record.model, record.technique,
                    error.splitlines()[0])
    return record
