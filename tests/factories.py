"""Small builders of test data, shared by the test modules."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from effbench.metrics.record import Metric, RunRecord, Source

_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
_clock = itertools.count()


def make_metric(name: str = "latency_ms", **overrides: Any) -> Metric:
    fields: dict[str, Any] = {
        "name": name,
        "value": 12.5,
        "unit": "ms",
        "source": Source.TIMER,
        "samples": [12.0, 12.5, 13.1, 11.9, 12.7],
        "higher_is_better": False,
        "note": "",
    }
    return Metric(**(fields | overrides))


def make_record(**overrides: Any) -> RunRecord:
    """A plausible `ok` run; each call gets a fresh id and a later created_at."""
    fields: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        # A second apart per call, so "newest first" has a defined answer.
        "created_at": (_EPOCH + timedelta(seconds=next(_clock))).isoformat(),
        "status": "ok",
        "axis": "inference",
        "scenario": "decode",
        "model": "tiny-llama",
        "technique": "baseline",
        "config": {"model": {"name": "tiny-llama", "layers": 2}, "batch": 8, "lr": 3e-4},
        "config_hash": "c0ffee",
        "hardware": {"cpu": "test cpu", "cores": 2, "devices": []},
        "software": {"python": "3.11", "torch": "2.13.0"},
        "seed": 0,
        "metrics": [
            make_metric(),
            make_metric(
                "tokens_per_s", value=310.0, unit="tok/s", samples=[300.0, 310.0, 322.5], higher_is_better=True
            ),
            make_metric(
                "peak_memory_bytes",
                value=1.5e6,
                unit="B",
                source=Source.SAMPLED,
                samples=[],
                higher_is_better=False,
                note="psutil RSS",
            ),
        ],
        "tags": ["smoke"],
        "sweep_id": None,
        "duration_s": 4.2,
    }
    return RunRecord(**(fields | overrides))
