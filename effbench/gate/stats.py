"""The gate's statistics: is a candidate's metric worse than its baseline's by
more than a tolerance, given the repeat samples of both?

Everything is phrased as a *worse-ratio* test against a shifted baseline. For a
lower-is-better metric with tolerance t (e.g. TPOT, t = 5%):

- regression  ⇔ the candidate's samples are stochastically larger than the
  baseline's samples scaled by (1 + t): one-sided Mann-Whitney U, p < alpha;
- improvement ⇔ they are stochastically smaller than baseline × (1 − t);
- pass        ⇔ neither, with the median ratio inside the tolerance;
- inconclusive ⇔ neither is significant but the median ratio lies beyond the
  tolerance (the data hint at a change that the repeats cannot confirm), or the
  samples are too few for the test to ever reach alpha.

Higher-is-better metrics mirror this (regression ⇔ smaller than baseline × (1 − t)).
Testing against the *shifted* baseline is what keeps A/A false alarms rare: a
same-code rerun must be worse by more than t, significantly, to fail.

The alternative method is a percentile bootstrap of the ratio of medians
(candidate / baseline): its one-sided p-value is the share of resampled ratios
not beyond 1 ± t, so regression ⇔ (about) the 1 − 2·alpha interval lies beyond it.

A gate runs many checks (metrics × pairs); `adjust_for_multiplicity` turns
their p-values into Benjamini–Hochberg adjusted ones so the false discoveries of
the whole set stay at alpha (effbench.gate.core applies it, then `decide`).

Deterministic figures (source `analytic`: byte counts, FLOPs, evaluated
perplexity) are not tested but compared by value against the same tolerance.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

import numpy as np
from scipy import stats

from effbench.gate.options import METHODS


class Verdict(str, enum.Enum):
    PASS = "pass"
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Comparison:
    """Outcome of one metric of one pair."""

    verdict: Verdict
    ratio: float  # median(candidate) / median(baseline); NaN where undefined
    reason: str = ""
    p_regression: float | None = None  # Mann-Whitney one-sided p-values
    p_improvement: float | None = None
    interval: tuple[float, float] | None = None  # bootstrap interval of the ratio
    method: str = ""


def min_attainable_p(n: int, m: int) -> float:
    """Smallest one-sided exact Mann-Whitney p-value with n and m samples: 1 / C(n+m, n)."""
    return 1.0 / comb(n + m, n)


def mann_whitney_greater(x: Sequence[float], y: Sequence[float], seed: int = 0) -> float:
    """One-sided p-value of H1: x is stochastically greater than y.

    Exact (scipy's exact null distribution) when there are no ties; with ties,
    an exact permutation distribution (enumerated when it has at most 9 999
    arrangements, else a seeded Monte Carlo of 9 999), since the normal
    approximation is poor at a handful of repeats."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    pooled = np.concatenate([x, y])
    if np.ptp(pooled) == 0:
        return 1.0  # every value equal: no evidence either way
    if np.unique(pooled).size == pooled.size:
        method = "exact"
    else:
        method = stats.PermutationMethod(n_resamples=9999, rng=np.random.default_rng(seed))
    return float(stats.mannwhitneyu(x, y, alternative="greater", method=method).pvalue)


def ratio_of_medians(candidate: Sequence[float], baseline: Sequence[float]) -> float:
    b = float(np.median(baseline))
    return float(np.median(candidate)) / b if b else math.nan


def _bootstrap(candidate: Sequence[float], baseline: Sequence[float], *, confidence: float, n_resamples: int,
               seed: int) -> tuple[float, float, np.ndarray]:
    c, b = np.asarray(candidate, float), np.asarray(baseline, float)
    if np.ptp(c) == 0 and np.ptp(b) == 0:  # no spread: every resample gives the same ratio
        r = ratio_of_medians(c, b)
        return r, r, np.array([r])

    def stat(x, y, axis=-1):
        return np.median(x, axis=axis) / np.median(y, axis=axis)

    res = stats.bootstrap((c, b), stat, paired=False, vectorized=True, n_resamples=n_resamples,
                          confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high), res.bootstrap_distribution


def bootstrap_ratio_interval(candidate: Sequence[float], baseline: Sequence[float], *, confidence: float = 0.90,
                             n_resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of median(candidate) / median(baseline),
    each group resampled independently (scipy.stats.bootstrap, paired=False)."""
    lo, hi, _ = _bootstrap(candidate, baseline, confidence=confidence, n_resamples=n_resamples, seed=seed)
    return lo, hi


def bootstrap_p(distribution: np.ndarray, bound: float, beyond_above: bool) -> float:
    """One-sided percentile-bootstrap p-value that the ratio lies beyond `bound`:
    the share of resampled ratios that do not (with the +1 of a resampling test),
    below alpha about when the 1 − 2·alpha percentile interval excludes the bound."""
    not_beyond = np.count_nonzero(distribution <= bound if beyond_above else distribution >= bound)
    if distribution.size == 1:  # no spread: the ratio is known
        return float(not_beyond)
    return (1 + not_beyond) / (1 + distribution.size)


def adjust_for_multiplicity(p_values: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (scipy.stats.false_discovery_control):
    a check whose adjusted p is below alpha is a discovery with the false
    discovery rate of the whole set of checks held at alpha."""
    if not len(p_values):
        return []
    return [float(p) for p in stats.false_discovery_control(np.asarray(p_values, float), method="bh")]


MULTIPLICITY = "Benjamini–Hochberg over all tested checks (false discovery rate ≤ alpha)"


def _bounds(tolerance: float) -> tuple[float, float]:
    return 1.0 + tolerance, 1.0 - tolerance


def compare_values(baseline: float, candidate: float, *, tolerance: float, higher_is_better: bool) -> Comparison:
    """Deterministic figures: the ratio against 1 ± tolerance, no test."""
    ratio = candidate / baseline if baseline else (1.0 if candidate == baseline else math.inf)
    up, down = _bounds(tolerance)
    worse = ratio < down if higher_is_better else ratio > up
    better = ratio > up if higher_is_better else ratio < down
    verdict = Verdict.REGRESSION if worse else Verdict.IMPROVEMENT if better else Verdict.PASS
    return Comparison(verdict, ratio, "deterministic figure: compared by value", method="value")


def compare_samples(baseline: Sequence[float], candidate: Sequence[float], *, tolerance: float,
                    higher_is_better: bool, alpha: float = 0.05, min_samples: int = 5,
                    method: str = "mannwhitney", n_resamples: int = 4000, seed: int = 0) -> Comparison:
    """The noise-aware check of one metric (see the module docstring).

    `tolerance` is a fraction (0.05 = 5%) by which the candidate may be worse
    before it counts as a regression; the direction comes from `higher_is_better`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be ≥ 0, got {tolerance}")
    b = np.asarray(baseline, float)
    c = np.asarray(candidate, float)
    n_b, n_c = b.size, c.size
    ratio = ratio_of_medians(c, b) if n_b and n_c else math.nan
    if min(n_b, n_c) < min_samples:
        return Comparison(Verdict.INCONCLUSIVE, ratio,
                          f"too few samples: {n_c} candidate, {n_b} baseline (need ≥ {min_samples} each: "
                          "raise scenario.repeats)", method=method)
    if method == "mannwhitney" and min_attainable_p(n_c, n_b) >= alpha:
        return Comparison(Verdict.INCONCLUSIVE, ratio,
                          f"{n_c} vs {n_b} samples can never reach p < {alpha} (smallest p is "
                          f"{min_attainable_p(n_c, n_b):.3g}): raise scenario.repeats", method=method)
    if not np.all(np.isfinite(b)) or not np.all(np.isfinite(c)):
        return Comparison(Verdict.INCONCLUSIVE, ratio, "non-finite samples", method=method)

    up, down = _bounds(tolerance)
    # "worse" bound and "better" bound of the baseline, in the metric's own units.
    worse_b, better_b = (b * down, b * up) if higher_is_better else (b * up, b * down)
    if method == "mannwhitney":
        if higher_is_better:
            p_reg = mann_whitney_greater(worse_b, c, seed)  # candidate < baseline·(1−t)
            p_imp = mann_whitney_greater(c, better_b, seed)  # candidate > baseline·(1+t)
        else:
            p_reg = mann_whitney_greater(c, worse_b, seed)  # candidate > baseline·(1+t)
            p_imp = mann_whitney_greater(better_b, c, seed)  # candidate < baseline·(1−t)
        interval = None
    else:
        lo, hi, dist = _bootstrap(c, b, confidence=1 - 2 * alpha, n_resamples=n_resamples, seed=seed)
        if higher_is_better:
            p_reg, p_imp = bootstrap_p(dist, down, beyond_above=False), bootstrap_p(dist, up, beyond_above=True)
        else:
            p_reg, p_imp = bootstrap_p(dist, up, beyond_above=True), bootstrap_p(dist, down, beyond_above=False)
        interval = (lo, hi)
    return decide(ratio, tolerance, p_reg, p_imp, alpha, method, interval)


def decide(ratio: float, tolerance: float, p_regression: float, p_improvement: float, alpha: float, method: str,
           interval: tuple[float, float] | None = None, adjusted: bool = False) -> Comparison:
    """The verdict from the two one-sided p-values (raw, or adjusted for multiplicity)."""
    up, down = _bounds(tolerance)
    regression, improvement = p_regression < alpha, p_improvement < alpha
    p = "adjusted p" if adjusted else "p"
    if interval is not None and not adjusted:
        evidence = f"{(1 - 2 * alpha):.0%} interval of the ratio {interval[0]:.3f}–{interval[1]:.3f}"
    else:
        evidence = f"{p}={p_regression:.3g}" if regression else f"{p}={p_improvement:.3g}" if improvement else \
            f"{p}_regression={p_regression:.3g}, {p}_improvement={p_improvement:.3g}"
    extra = {"p_regression": p_regression, "p_improvement": p_improvement, "interval": interval, "method": method}
    if regression:
        return Comparison(Verdict.REGRESSION, ratio, f"worse by more than {tolerance:.1%}: {evidence}", **extra)
    if improvement:
        return Comparison(Verdict.IMPROVEMENT, ratio, f"better by more than {tolerance:.1%}: {evidence}", **extra)
    beyond = (ratio < down or ratio > up) if math.isfinite(ratio) else False
    if beyond:
        return Comparison(Verdict.INCONCLUSIVE, ratio,
                          f"median ratio {ratio:.3f} is beyond ±{tolerance:.1%} but not significant "
                          f"({evidence}): add repeats or rerun", **extra)
    return Comparison(Verdict.PASS, ratio, evidence, **extra)
