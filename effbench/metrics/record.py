"""The shape of every stored figure and run (docs/spec.md §1, §2, §4).

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
class Domain:
    """The values a quantity can physically take: [low, high], or (low, high] when
    `low_open` (a time, a size, a rate: > 0). `tolerance` is the stated measurement
    tolerance above `high` (a utilization measured at 1.03 is noise; at 5.0, a defect)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    tolerance: float = 0.0

    def inside(self, x) -> np.ndarray:
        """Elementwise: which values lie in the domain (NaN never does)."""
        x = np.asarray(x, dtype=float)
        above_low = x > self.low if self.low_open else x >= self.low
        return above_low & (x <= self.high + self.tolerance)

    def contains(self, x) -> bool:
        """Whether x (a number, or every element of an array) lies in the domain."""
        return bool(self.inside(x).all())

    def describe(self) -> str:
        high = "∞)" if self.high == math.inf else f"{self.high:g}]"
        text = f"{'(' if self.low_open else '['}{self.low:g}, {high}"
        return text + (f" + tolerance {self.tolerance:g}" if self.tolerance else "")


def min_samples_for_median_interval(confidence: float = 0.95) -> int:
    """Fewest samples whose range [min, max] covers the median with `confidence`
    without assuming a distribution: P(not all n on one side) = 1 − 2·0.5ⁿ ≥ confidence.
    6 for 95% (1 − 2/64 = 0.969; 5 samples give only 0.9375)."""
    return math.ceil(math.log2(2 / (1 - confidence)))


MIN_SAMPLES_MEDIAN_CI = min_samples_for_median_interval()


def _median_interval(a: np.ndarray) -> tuple[float | None, float | None]:
    """Distribution-free 95% interval of the median: the order statistics x₍ₖ₎ and
    x₍ₙ₋ₖ₊₁₎ with k the largest such that P(Bin(n, ½) < k) ≤ 2.5%, as
    scipy.stats.quantile_test(...).confidence_interval() gives (20× faster than it).
    Its ends are samples, so it never leaves the quantity's domain."""
    n = a.size
    if n < MIN_SAMPLES_MEDIAN_CI:
        return None, None
    # binom.ppf(2.5%, n, ½), exactly: the smallest k with P(B ≤ k) ≥ 2.5% (the CDF takes values m/2ⁿ,
    # never 1/40 itself) = the largest k with P(B ≤ k − 1) ≤ 2.5%. Counted here, not by scipy.stats,
    # whose import costs every run's store write a second.
    k, below = 0, math.comb(n, 0)
    while below * 40 < 2**n:
        k += 1
        below += math.comb(n, k)
    x = np.sort(a)
    return float(x[k - 1]), float(x[n - k])


_LOG_MAX = math.log(np.finfo(float).max)


def _mean_interval(a: np.ndarray, domain: Domain | None) -> tuple[float, float]:
    """95% interval of the mean that stays inside the quantity's domain.

    - Positive quantities (domain (0, ∞) or [0, ∞), every sample > 0): on the log
      scale, Cox's interval for the mean of a log-normal (Olsson 2005):
      exp(ȳ + s²/2 ± t·√(s²/n + s⁴/(2(n−1)))) with ȳ, s² of log x. Timings, rates,
      energies and sizes are right-skewed and positive; the interval is too.
    - Otherwise the Student-t interval, intersected with the domain (+ tolerance):
      the true mean lies in the domain, so the intersection keeps the 95% coverage.
    - Samples outside the domain (an invalid metric): the plain Student-t interval,
      so the defect shows rather than being clipped away.
    One sample: [mean, mean] (no interval; Summary.few_samples says so).
    """
    mean = float(a.mean())
    if a.size < 2:
        return mean, mean
    from scipy.special import stdtrit  # Student-t quantile; scipy.stats would cost a second to import

    t = float(stdtrit(a.size - 1, 0.975))
    inside = domain is not None and domain.contains(a)
    if inside and domain.low == 0 and domain.high == math.inf and (a > 0).all():
        y = np.log(a)
        s2 = float(y.var(ddof=1))
        centre = float(y.mean()) + s2 / 2
        half = t * math.sqrt(s2 / a.size + s2**2 / (2 * (a.size - 1)))
        if centre + half < _LOG_MAX:
            return math.exp(centre - half), math.exp(centre + half)
        # A spread of many orders of magnitude at tiny n: the log-normal bound is not a
        # finite float; the Student-t interval cut at 0 below is the fallback.
    # Student-t: repeats are few (5-10), a normal quantile would understate the uncertainty.
    half = t * float(a.std(ddof=1)) / math.sqrt(a.size)
    low, high = mean - half, mean + half
    if inside:  # the tolerance too: samples within it must stay inside their own interval
        low, high = max(low, domain.low), min(high, domain.high + domain.tolerance)
    return low, high


@dataclass(frozen=True)
class Summary:
    """Statistics of a metric's samples. The headline value is the median: its
    95% interval is `median_ci95_low/high` (None below MIN_SAMPLES_MEDIAN_CI samples);
    `ci95_low/high` is the 95% interval of the mean, beside it."""

    n: int
    median: float
    mean: float
    p50: float
    p90: float
    p99: float
    std: float
    ci95_low: float  # interval of the mean (see _mean_interval)
    ci95_high: float
    median_ci95_low: float | None  # None: too few samples (few_samples)
    median_ci95_high: float | None
    # Fewer samples than a distribution-free 95% interval of the median needs (6):
    # the median's interval is None, and the mean's rests on a distribution assumption
    # (n = 1: it is [mean, mean], no interval at all).
    few_samples: bool

    @classmethod
    def of(cls, samples: list[float], domain: Domain | None = None) -> Summary:
        if not samples:
            raise ValueError("a summary needs at least one sample")
        a = np.asarray(samples, dtype=float)
        std = float(a.std(ddof=1)) if a.size > 1 else 0.0
        p50, p90, p99 = (float(x) for x in np.percentile(a, [50, 90, 99]))
        ci_low, ci_high = _mean_interval(a, domain)
        median_low, median_high = _median_interval(a)
        return cls(
            n=int(a.size),
            median=p50,
            mean=float(a.mean()),
            p50=p50,
            p90=p90,
            p99=p99,
            std=std,
            ci95_low=ci_low,
            ci95_high=ci_high,
            median_ci95_low=median_low,
            median_ci95_high=median_high,
            few_samples=bool(a.size < MIN_SAMPLES_MEDIAN_CI),
        )


@dataclass
class Metric:
    """One named figure: its headline value, unit, source and samples.

    `value` is the figure the run reports (the median of repeat samples unless
    the metric says otherwise, e.g. a total over the window). `invalid` is the
    reason the figure is impossible (outside its catalogue domain: a utilization
    above 1, a negative energy, a non-positive time), filled in on construction:
    such a figure is a defect, stored with the reason but never ranked as a result.
    """

    name: str
    value: float
    unit: str
    source: Source
    samples: list[float] = field(default_factory=list)
    higher_is_better: bool | None = None
    note: str = ""
    invalid: str | None = None

    def __post_init__(self) -> None:
        self.source = Source(self.source)
        self.value = float(self.value)
        self.samples = [float(s) for s in self.samples] or [self.value]
        if self.invalid is None:  # however it is built (catalogue, store row, imported JSON)
            self.invalid = _catalog().invalid_reason(self.name, self.value, self.samples)

    @property
    def summary(self) -> Summary:
        return Summary.of(self.samples, _catalog().domain_of(self.name))

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
            invalid=d.get("invalid"),
        )


def _catalog():
    from effbench.metrics import catalog  # the catalogue builds on this module: imported when first needed

    return catalog


def invalid_metrics(metrics: list[Metric]) -> list[Metric]:
    """The metrics flagged impossible: defects to fix at their cause, not results."""
    return [m for m in metrics if m.invalid]


@dataclass
class RunRecord:
    """One executed (or failed, or skipped) pair in one scenario: docs/spec.md §4."""

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
