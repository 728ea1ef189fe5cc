"""The load curve and capacity under SLOs.

Rate sweep: one load per offered rate; each point holds goodput, SLO
attainment, p90 TTFT and error rate. The knee is the highest swept rate up to
which every swept rate meets the attainment target (a lucky pass above a
failing rate does not count).

Capacity: the highest load (Poisson rate or closed-loop concurrency) whose SLO
attainment meets a target with a stated confidence. Each load gets looks of n
requests; after each look the Wilson interval of the attainment over all its
looks decides: it meets the target when the interval's low end ≥ target,
misses when the high end < target, and after `max_looks` an undecided load
counts as a miss (capacity is what was shown, never assumed). Loads are
bracketed by doubling (or halving) from `start`, then bisected until the gap is
within `rel_tol`. The confidence holds per verdict, not jointly over all looks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import binomtest

from effbench.metrics.catalog import make_metric
from effbench.metrics.record import Metric, Source
from effbench.metrics.serving import ServedLoad, describe_slos, meets_slos
from effbench.serving.config import CapacityLoad
from effbench.serving.load import ClosedLoop, Load, OpenLoop, poisson_offsets


@dataclass(frozen=True)
class SweepPoint:
    rate: float  # offered, requests per second
    goodput_rps: float
    attainment: float  # failed requests count as missing the SLOs
    ttft_p90_s: float | None  # of the answered requests; None when none was answered
    error_rate: float


def sweep_point(rate: float, run: ServedLoad, slos: dict[str, float | None]) -> SweepPoint:
    good = sum(meets_slos(r, slos) for r in run.requests)
    sent = len(run.requests) + run.failed_count
    ttft = [r.ttft for r in run.requests]
    return SweepPoint(rate, good / run.duration_s, good / sent,
                      float(np.percentile(ttft, 90)) if ttft else None, run.failed_count / sent)


def knee(points: list[SweepPoint], target: float) -> float | None:
    """Highest rate up to which every swept rate has attainment ≥ target; None if the lowest misses."""
    best = None
    for p in sorted(points, key=lambda p: p.rate):
        if p.attainment < target:
            break
        best = p.rate
    return best


def sweep_metrics(points: list[SweepPoint], target: float, slos: dict[str, float | None]
                  ) -> tuple[list[Metric], list[str]]:
    """The load curve as metrics (samples one per rate, ascending; value at the
    knee, or at the lowest rate when none meets the target) and the knee; and
    warnings for what could not be stored."""
    points = sorted(points, key=lambda p: p.rate)
    rate = knee(points, target)
    at = next((p for p in points if p.rate == rate), points[0])
    rates = ", ".join(f"{p.rate:g}" for p in points)
    how = (f"rate sweep: one seeded Poisson load per offered rate ({rates} req/s); one sample per rate in that "
           f"order; value at {'the knee' if rate is not None else 'the lowest rate (no knee)'}, {at.rate:g} req/s; "
           f"SLOs: {describe_slos(slos)}")

    def curve(name: str, values: list[float], value: float, source: Source = Source.TIMER) -> Metric:
        return make_metric(name, value, source, values, note=how)

    out = [
        curve("serve.sweep_rates", [p.rate for p in points], at.rate, Source.ANALYTIC),
        curve("serve.sweep_goodput_requests_per_s", [p.goodput_rps for p in points], at.goodput_rps),
        curve("serve.sweep_slo_attainment", [p.attainment for p in points], at.attainment),
        curve("serve.sweep_error_rate", [p.error_rate for p in points], at.error_rate),
    ]
    warnings = []
    if all(p.ttft_p90_s is not None for p in points):
        out.append(curve("serve.sweep_ttft_p90_s", [p.ttft_p90_s for p in points], at.ttft_p90_s))
    else:
        warnings.append(f"rate sweep: no request answered at {[p.rate for p in points if p.ttft_p90_s is None]} "
                        "req/s, so serve.sweep_ttft_p90_s is not stored")
    if rate is None:
        warnings.append(f"rate sweep: the lowest swept rate ({points[0].rate:g} req/s) already misses the SLO "
                        f"attainment target {target:g}: no serve.knee_rate")
    else:
        out.append(make_metric("serve.knee_rate", rate, Source.TIMER,
                               note=f"highest swept rate up to which every swept rate has SLO attainment ≥ "
                                    f"{target:g}; {how}"))
    return out, warnings


def wilson(good: int, n: int, confidence: float) -> tuple[float, float]:
    ci = binomtest(good, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Look:
    load: float
    n: int  # requests in this look
    good: int  # of them meeting every SLO
    low: float  # Wilson interval of attainment over all looks at this load so far
    high: float
    verdict: str  # meets | misses | undecided


@dataclass
class Capacity:
    load: float | None  # highest load shown to meet the target; None when no load tried did
    kind: CapacityLoad
    target: float
    confidence: float
    max_looks: int
    rel_tol: float
    bracketed: bool  # a load above `load` was shown (or left undecided) to miss: capacity < that load
    looks: list[Look] = field(default_factory=list)

    @property
    def how(self) -> str:
        sizes = sorted({look.n for look in self.looks})
        bound = "" if self.bracketed else "; never bracketed: the capacity is at least this (the search's top)"
        return (f"highest {self.kind.value} whose SLO attainment ≥ {self.target:g} with {self.confidence:.0%} "
                f"confidence: Wilson interval low end ≥ target meets, high end < target misses, undecided after "
                f"{self.max_looks} looks misses; doubling/halving bracket then bisection to {self.rel_tol:.0%}; "
                f"{len(self.looks)} looks at {len({look.load for look in self.looks})} loads, n per look "
                f"{'/'.join(map(str, sizes))}{bound}")

    def metric(self) -> Metric:
        if self.load is None:
            raise ValueError(f"no load tried meets the target: {self.how}")
        name = "serve.capacity_rate" if self.kind is CapacityLoad.rate else "serve.capacity_concurrency"
        return make_metric(name, self.load, Source.TIMER, note=self.how)


# (load, look number at that load) → (requests meeting every SLO, requests sent)
Measure = Callable[[float, int], tuple[int, int]]


def find_capacity(measure: Measure, *, kind: CapacityLoad = CapacityLoad.rate, start: float = 1.0,
                  max_load: float = 256.0, min_load: float | None = None, target: float = 0.9,
                  confidence: float = 0.95, max_looks: int = 3, rel_tol: float = 0.1) -> Capacity:
    integer = kind is CapacityLoad.concurrency
    floor = min_load if min_load is not None else (1 if integer else start / 64)
    cap = Capacity(None, kind, target, confidence, max_looks, rel_tol, bracketed=False)

    def meets(load: float) -> bool:
        good = sent = 0
        for i in range(max_looks):
            g, n = measure(load, i)
            good, sent = good + g, sent + n
            low, high = wilson(good, sent, confidence)
            verdict = "meets" if low >= target else "misses" if high < target else "undecided"
            cap.looks.append(Look(load, n, g, low, high, verdict))
            if verdict != "undecided":
                return verdict == "meets"
        return False

    def middle(lo: float, hi: float) -> float:
        return (lo + hi) // 2 if integer else (lo + hi) / 2

    lo, hi = None, None
    if meets(start):
        lo = start
        while lo < max_load:
            x = min(lo * 2, max_load)
            if not meets(x):
                hi = x
                break
            lo = x
    else:
        hi = start
        while hi > floor:
            x = max(hi // 2 if integer else hi / 2, floor)
            if meets(x):
                lo = x
                break
            hi = x
    if lo is not None and hi is not None:
        while hi - lo > max(rel_tol * lo, 1 if integer else 0):
            x = middle(lo, hi)
            if meets(x):
                lo = x
            else:
                hi = x
    cap.load, cap.bracketed = lo, hi is not None
    return cap


def load_measure(run_load: Callable[[Load], ServedLoad], slos: dict[str, float | None], kind: CapacityLoad,
                 requests_per_look: int, seed: int) -> Measure:
    """A Measure from anything that serves a load (in-process or over HTTP):
    each look a fresh load of requests_per_look (Poisson looks at one rate
    differ by seed: seed + look number). Failed requests count as sent and missed."""
    def measure(load: float, look: int) -> tuple[int, int]:
        if kind is CapacityLoad.rate:
            profile = OpenLoop(poisson_offsets(load, requests_per_look, seed + look))
        else:
            profile = ClosedLoop(int(load), requests_per_look)
        run = run_load(profile)
        return sum(meets_slos(r, slos) for r in run.requests), len(run.requests) + run.failed_count
    return measure
