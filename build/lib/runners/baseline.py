"""The MCR baseline (docs/spec.md §2): the same model at the baseline precision
(fp32 on a CPU, bf16 on a GPU), measured the same way.

Its perplexity comes from the newest `ok` run in the store of that model at that
precision with the same model config, data, eval settings and device type; when
there is none it is measured in this process on the model loaded afresh at the
baseline precision. The MCR metric's note says which.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runners.base import StoredBaseline

if TYPE_CHECKING:
    import torch

    from runners.base import Subject

log = logging.getLogger("effbench")

# What a perplexity depends on, besides the model's weights and precision.
_SCENARIO_KEYS = ("name", "eval_context", "eval_max_tokens")


def _model_key(model_cfg: dict) -> dict:
    return {k: v for k, v in model_cfg.items() if k != "store_url"}  # where a checkpoint is recorded, not what it is


@dataclass(frozen=True)
class StoreBaselineLookup:
    """Read-only search of a results store; the configs compared are plain dicts."""

    store_url: str | None
    model: dict[str, Any]
    data: dict[str, Any]
    scenario: dict[str, Any]

    def matches(self, record, device_type: str, dtype: str) -> bool:
        rc = record.config or {}
        technique, scenario = rc.get("technique", {}), rc.get("scenario", {})
        return (technique.get("method") == "precision" and technique.get("dtype") == dtype
                and record.hardware.get("device_type") == device_type
                and _model_key(rc.get("model", {})) == _model_key(self.model)
                and rc.get("data") == self.data
                and all(scenario.get(k) == self.scenario.get(k) for k in _SCENARIO_KEYS)
                and any(m.name == "quality.perplexity" for m in record.metrics))

    def find(self, device_type: str, dtype: str) -> StoredBaseline | None:
        from effbench.store import StoreMissing, open_store

        try:
            store = open_store(self.store_url, read_only=True)
        except StoreMissing:
            return None
        with store:
            for record in store.runs(status="ok", scenario=self.scenario["name"]):  # newest first
                if self.matches(record, device_type, dtype):
                    return StoredBaseline(record.metric("quality.perplexity").value, record.id, record.technique)
        return None


def is_baseline(subject: Subject, dtype: str) -> bool:
    cfg = subject.technique_config
    return cfg.method == "precision" and str(getattr(cfg.dtype, "value", cfg.dtype)) == dtype


@dataclass(frozen=True)
class BaselineQuality:
    perplexity: float | None  # None: this run is itself the baseline (its own perplexity is used)
    note: str


def baseline_quality(subject: Subject, device: torch.device, dtype: str, heldout: list[int]) -> BaselineQuality:
    """The stored baseline's perplexity, or one measured now on the model loaded at `dtype`."""
    if is_baseline(subject, dtype):
        return BaselineQuality(None, f"this run is the baseline ({dtype}): quality ratio 1")
    stored = None
    # A technique that changes the architecture has no stored baseline of its own model.
    if subject.baseline is not None:
        try:
            stored = subject.baseline.find(device.type, dtype)
        except Exception as e:  # noqa: BLE001 - an unreadable store only means measuring here
            log.warning("MCR: could not search the store for a baseline run (%s); measuring it in-process", e)
    if stored is not None:
        return BaselineQuality(stored.perplexity, f"baseline perplexity {stored.perplexity:.4g} from stored run "
                                                  f"{stored.run_id} ({stored.technique}, {dtype})")
    ppl = inprocess_perplexity(subject, device, dtype, heldout)
    return BaselineQuality(ppl, f"baseline perplexity {ppl:.4g} measured in-process on the model loaded at {dtype} "
                                "(no stored baseline run matched)")


def inprocess_perplexity(subject: Subject, device: torch.device, dtype: str, heldout: list[int]) -> float:
    """Held-out perplexity of the model loaded afresh at `dtype` (not upcast from a technique's
    rounded weights), measured as the inference scenario measures it."""
    import torch

    from effbench.metrics.quality import heldout_loss
    from effbench.models import load_model
    from effbench.techniques import torch_dtype

    dt = torch_dtype(dtype)
    model = load_model(subject.model, dt).model.to(device=device, dtype=dt)
    with torch.inference_mode():
        loss, _, _ = heldout_loss(model, heldout[: subject.scenario.eval_max_tokens], subject.scenario.eval_context,
                                  device)
    del model
    return math.exp(loss)
