"""MCR, the paper's Model Compression Rate (SPEC §2):

    compression.mcr = compression ratio × quality ratio,   quality ratio = baseline ppl / ppl

The baseline is the same model at the baseline precision (fp32 on a CPU, bf16
on a GPU). Its perplexity comes from the newest `ok` run in the store of that
model at that precision, measured the same way (same model config, data, eval
settings, device type); when there is none it is computed in-process on the
model before the technique is applied. The metric's note says which.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import OmegaConf

from effbench.metrics.catalog import make_metric
from effbench.metrics.record import Metric, RunRecord, Source

log = logging.getLogger("effbench")

# What a perplexity depends on, besides the model's weights and precision.
_SCENARIO_KEYS = ("name", "eval_context", "eval_max_tokens")


@dataclass(frozen=True)
class BaselineQuality:
    perplexity: float | None  # None: this run is itself the baseline (its own perplexity is used)
    note: str
    run_id: str | None = None  # the stored baseline run, when one was used


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _as_dict(node: Any) -> dict:
    if isinstance(node, dict):
        return node
    return OmegaConf.to_container(OmegaConf.structured(node), resolve=True, enum_to_str=True)


def _model_key(model_cfg: dict) -> dict:
    return {k: v for k, v in model_cfg.items() if k != "store_url"}  # where a checkpoint is recorded, not what it is


def is_baseline(cfg, base: torch.dtype) -> bool:
    t = _as_dict(cfg.technique)
    return t.get("method") == "precision" and t.get("dtype") == _dtype_name(base)


def matches_baseline(record: RunRecord, cfg, device: torch.device, base: torch.dtype) -> bool:
    """`record` measured this run's model at the baseline precision the same way."""
    rc = record.config or {}
    technique, scenario = rc.get("technique", {}), rc.get("scenario", {})
    sc = _as_dict(cfg.scenario)
    return (technique.get("method") == "precision" and technique.get("dtype") == _dtype_name(base)
            and record.hardware.get("device_type") == device.type
            and _model_key(rc.get("model", {})) == _model_key(_as_dict(cfg.model))
            and rc.get("data") == _as_dict(cfg.data)
            and all(scenario.get(k) == sc.get(k) for k in _SCENARIO_KEYS)
            and any(m.name == "quality.perplexity" for m in record.metrics))


def find_baseline_run(cfg, device: torch.device, base: torch.dtype) -> RunRecord | None:
    from effbench.store import ResultStore

    with ResultStore(cfg.store.url, read_only=True) as store:
        for record in store.runs(status="ok", scenario=_as_dict(cfg.scenario)["name"]):  # newest first
            if matches_baseline(record, cfg, device, base):
                return record
    return None


def _heldout_ids(cfg, tok) -> list[int]:
    from effbench.data import load_corpus

    d = cfg.data
    corpus = load_corpus(d.source, d.path, d.text_field, d.heldout_fraction, d.max_chars)
    return tok(corpus.heldout_text, add_special_tokens=False).input_ids[: cfg.scenario.eval_max_tokens]


def _model_config(cfg):
    """The model config the runner built (architecture techniques change it)."""
    from effbench.techniques import get_technique

    return get_technique(cfg.technique.method).configure_model(cfg.model, cfg.technique)


def inprocess_perplexity(cfg, model: torch.nn.Module, tok, device: torch.device, base: torch.dtype) -> float:
    """Held-out perplexity of the model at `base` on `device`, measured as the
    inference runner measures it; `model` itself is left as it was. A model
    loaded in another dtype than `base` (hub weights loaded in a technique's
    half precision) is loaded again at `base`, not upcast from rounded weights."""
    from effbench.metrics.quality import heldout_loss
    from effbench.models import load_model

    p = next(model.parameters())
    if p.dtype == base:
        baseline = model if p.device.type == device.type else copy.deepcopy(model).to(device)
    else:
        baseline = load_model(_model_config(cfg), base).model.to(device=device, dtype=base)
    with torch.inference_mode():
        loss, _, _ = heldout_loss(baseline, _heldout_ids(cfg, tok), cfg.scenario.eval_context, device)
    del baseline
    return math.exp(loss)


def baseline_quality(cfg, model: torch.nn.Module, tok, device: torch.device, base: torch.dtype) -> BaselineQuality:
    """Call before the technique is applied: the stored baseline's perplexity, or
    one measured now on the unmodified model."""
    name = _dtype_name(base)
    if is_baseline(cfg, base):
        return BaselineQuality(None, f"this run is the baseline ({name}): quality ratio 1")
    record = None
    # A technique that changes the architecture has no stored baseline of its own model.
    if _model_config(cfg) == cfg.model:
        try:
            record = find_baseline_run(cfg, device, base)
        except Exception as e:  # noqa: BLE001 - an unreadable store only means measuring here
            log.warning("MCR: could not search the store for a baseline run (%s); measuring it in-process", e)
    if record is not None:
        ppl = record.metric("quality.perplexity").value
        return BaselineQuality(ppl, f"baseline perplexity {ppl:.4g} from stored run {record.id} "
                                    f"({record.technique}, {name})", record.id)
    ppl = inprocess_perplexity(cfg, model, tok, device, base)
    return BaselineQuality(ppl, f"baseline perplexity {ppl:.4g} measured in-process on the model at {name} "
                                "before the technique was applied (no stored baseline run matched)")


def mcr_metrics(baseline: BaselineQuality, ratio: float, quality: list[Metric]) -> list[Metric]:
    ppl = next(m.value for m in quality if m.name == "quality.perplexity")
    base_ppl = ppl if baseline.perplexity is None else baseline.perplexity
    return [make_metric("compression.mcr", ratio * base_ppl / ppl, Source.ANALYTIC,
                        note=f"compression ratio {ratio:.4g} × (baseline ppl / ppl = {base_ppl:.4g} / {ppl:.4g}); "
                             + baseline.note)]
