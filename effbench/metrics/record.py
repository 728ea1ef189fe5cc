"""The shape of every stored figure and run (SPEC §1, §2, §4).

A `Metric` keeps its raw samples next to the summary so nothing downstream
(leaderboard ranks, CI gates) has to trust a single number.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


class Source(str, enum.Enum):
    """How a figure was obtained; stored beside every value."""

    COUNTER = "counter"  # hardware energy counter (NVML total energy, RAPL)
    SAMPLED = "sampled"  # a polling thread (NVML power/util/memory, psutil)
    TIMER = "timer"  # clocks (wall clock, process CPU time)
    ANALYTIC = "analytic"  # counted FLOPs, bytes, evaluated losses
    ESTIMATED = "estimated"  # a model: codecarbon's TDP table, a constant power


class Status(str, enum.Enum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    mean: float
    p50: float
    p90: float
    p99: float
    std: float
    ci95_low: float
    ci95_high: float

    @classmethod
    def of(cls, samples: list[float]) -> Summary:
        from scipy import stats  # here, not at import: listing runs needs no scipy

        if not samples:
            raise ValueError("a summary needs at least one sample")
        a = np.asarray(samples, dtype=float)
        mean = float(a.mean())
        std = float(a.std(ddof=1)) if a.size > 1 else 0.0
        # Student-t interval of the mean: repeats are few (5-10), a normal
        # quantile would understate the uncertainty.
        half = float(stats.t.ppf(0.975, a.size - 1) * std / math.sqrt(a.size)) if a.size > 1 else 0.0
        p50, p90, p99 = (float(x) for x in np.percentile(a, [50, 90, 99]))
        return cls(
            n=int(a.size),
            median=p50,
            mean=mean,
            p50=p50,
            p90=p90,
            p99=p99,
            std=std,
            ci95_low=mean - half,
            ci95_high=mean + half,
        )


@dataclass
class Metric:
    """One named figure: its headline value, unit, source and samples.

    `value` is the figure the run reports (the median of repeat samples unless
    the metric says otherwise, e.g. a total over the window).
    """

    name: str
    value: float
    unit: str
    source: Source
    samples: list[float] = field(default_factory=list)
    higher_is_better: bool | None = None
    note: str = ""

    def __post_init__(self) -> None:
        self.source = Source(self.source)
        self.value = float(self.value)
        self.samples = [float(s) for s in self.samples] or [self.value]

    @property
    def summary(self) -> Summary:
        return Summary.of(self.samples)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["source"] = self.source.value
        d["summary"] = asdict(self.summary)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Metric:
        return cls(
            name=d["name"],
            value=d["value"],
            unit=d["unit"],
            source=Source(d["source"]),
            samples=list(d.get("samples") or []),
            higher_is_better=d.get("higher_is_better"),
            note=d.get("note", ""),
        )


@dataclass
class RunRecord:
    """One executed (or failed, or skipped) pair in one scenario: SPEC §4."""

    id: str
    created_at: str  # ISO-8601, UTC
    status: Status
    axis: str
    scenario: str
    model: str
    technique: str
    config: dict[str, Any]
    config_hash: str
    hardware: dict[str, Any]
    software: dict[str, Any]
    seed: int
    metrics: list[Metric] = field(default_factory=list)
    error: str | None = None
    tags: list[str] = field(default_factory=list)
    sweep_id: str | None = None
    duration_s: float | None = None
    # A saved checkpoint (pretraining, fine-tuning): {"path", "sha256", "bytes"}.
    artifact: dict[str, Any] | None = None
    # Non-fatal problems of an ok run (e.g. its quality step failed, so those figures are missing).
    warnings: list[str] = field(default_factory=list)
    # Where the measured model came from when a file was converted (e.g. a GGUF file, its sha256, the dequantization).
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"run {self.id} has no metric {name!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        d["metrics"] = [m.to_dict() for m in self.metrics]
        return d
