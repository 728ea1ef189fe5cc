"""Process-level statistics: is a candidate worse than its baseline by more than a
tolerance, given one figure per *process* (the median of its repeats)?

Why processes: on shared vCPUs each process draws its own speed (run medians
differ 6–12% between processes but ~3% within one: docs/results/gate_power.md),
so repeats inside one process cannot show the noise that separates a baseline
process from a candidate process. The unit of measurement is the process.

Everything is on the log scale, oriented so that larger = worse: u = log(x) for
a lower-is-better metric, −log(x) for a higher-is-better one. With tolerance t
the regression margin is m = log(1 + t) (lower is better) or −log(1 − t)
(higher is better), so "worse by more than t" ⇔ δ > m, where δ is the mean
candidate − baseline difference of u.

- paired (each baseline process with the candidate process of its pair): the
  log ratios w_k = u_cand,k − u_base,k, one-sample tests of their mean;
- unpaired: the two sides' u, a two-sample test of the difference of means.

Three one-sided tests per check:
- p_regression:  H1 δ > m      (worse by more than t);
- p_within:      H1 δ < m      (shown *not* worse by more than t: a pass);
- p_improvement: H1 δ < m_imp  (better by more than t).

Tests (`process_test`): `t` (default) — Student's t on the log ratios
(scipy.stats.ttest_1samp; Welch's ttest_ind unpaired), whose power has the exact
noncentral-t form (scipy.stats.nct) behind the minimum detectable change; and
`permutation` — the sign-flip (paired) or label (unpaired) permutation test of
the mean (scipy.stats.permutation_test), free of the normality assumption but
discrete: with n pairs no p-value is below 2⁻ⁿ, so 3 pairs can never reach 0.05.

Sequential looks: a session plans a few looks (numbers of pairs); look k is
tested at the alpha that a Lan–DeMets O'Brien–Fleming-type spending function
releases between the previous look and this one. The looks' alphas add up to
alpha, so by the union bound the chance of any false call over all looks is at
most alpha, whatever the looks see — no peeking.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from effbench.gate.options import PROCESS_TESTS

TEST_NAMES = {"t": "t-test on log ratios", "permutation": "sign-flip permutation test on log ratios"}
UNPAIRED_TEST_NAMES = {"t": "Welch t-test on log figures", "permutation": "permutation test on log figures"}


def oriented_logs(values: Sequence[float], higher_is_better: bool) -> np.ndarray:
    """log of each figure, negated for higher-is-better metrics: larger is worse."""
    logs = np.log(np.asarray(values, float))
    return -logs if higher_is_better else logs


def margins(tolerance: float, higher_is_better: bool) -> tuple[float, float]:
    """(regression margin, improvement margin) on the oriented log scale."""
    if higher_is_better:
        return -math.log1p(-tolerance), -math.log1p(tolerance)
    return math.log1p(tolerance), (math.log1p(-tolerance) if tolerance < 1 else -math.inf)


def relative(log_change: float) -> float:
    """A log-scale change as a relative one: log(1.07) → 0.07."""
    return math.expm1(log_change)


def format_change(change: float) -> str:
    """0.071 → '7.1%'; beyond +900% as a factor ('2.4e+03×'), which reads better."""
    return f"{change:.1%}" if change < 9 else f"{1 + change:.3g}×"


@dataclass(frozen=True)
class Evidence:
    """The raw (not yet multiplicity-adjusted) one-sided tests of one metric."""

    paired: bool
    n_baseline: int  # processes
    n_candidate: int
    ratio: float  # geometric-mean ratio candidate / baseline
    delta: float  # mean oriented log difference (> 0: worse)
    sd: float  # sd of the log ratios (paired) or pooled sd of the log figures (unpaired); NaN below 2
    p_regression: float
    p_within: float
    p_improvement: float

    @property
    def n(self) -> int:
        """Pairs (paired) or the smaller side."""
        return min(self.n_baseline, self.n_candidate)


def _p_values(x: np.ndarray, y: np.ndarray | None, test: str, n_resamples: int,
              seed: int) -> tuple[float, float]:
    """One-sided p-values that mean(x) (− mean(y)) is greater, and less, than 0."""
    spread = np.ptp(x) if y is None else max(np.ptp(x), np.ptp(y))
    if x.size < 2 or (y is not None and y.size < 2):
        return 1.0, 1.0  # one process per side shows nothing about the spread
    if spread == 0:  # every process gave the same figure: the difference is known exactly
        diff = x.mean() - (0.0 if y is None else y.mean())
        return float(diff <= 0), float(diff >= 0)
    if test == "t":  # one statistic, both tails
        res = stats.ttest_1samp(x, 0.0) if y is None else stats.ttest_ind(x, y, equal_var=False)
        return float(stats.t.sf(res.statistic, res.df)), float(stats.t.cdf(res.statistic, res.df))
    out = []
    for alternative in ("greater", "less"):
        rng = np.random.default_rng(seed)
        if y is None:
            res = stats.permutation_test((x,), lambda a, axis: np.mean(a, axis=axis), permutation_type="samples",
                                         alternative=alternative, n_resamples=n_resamples, vectorized=True, rng=rng)
        else:
            res = stats.permutation_test((x, y), lambda a, b, axis: np.mean(a, axis=axis) - np.mean(b, axis=axis),
                                         permutation_type="independent", alternative=alternative,
                                         n_resamples=n_resamples, vectorized=True, rng=rng)
        out.append(float(res.pvalue))
    return out[0], out[1]


def process_evidence(baseline: Sequence[float], candidate: Sequence[float], *, tolerance: float,
                     higher_is_better: bool, paired: bool, test: str = "t", n_resamples: int = 9999,
                     seed: int = 0) -> Evidence:
    """The three one-sided tests of one metric on per-process figures (see the module docstring).
    Paired: baseline[k] and candidate[k] ran next to each other."""
    if test not in PROCESS_TESTS:
        raise ValueError(f"test must be one of {', '.join(PROCESS_TESTS)}, got {test!r}")
    ub, uc = oriented_logs(baseline, higher_is_better), oriented_logs(candidate, higher_is_better)
    if paired and ub.size != uc.size:
        raise ValueError(f"paired figures need equal counts, got {ub.size} baseline and {uc.size} candidate")
    m_reg, m_imp = margins(tolerance, higher_is_better)
    if paired:
        w = uc - ub
        delta = float(w.mean())
        sd = float(w.std(ddof=1)) if w.size > 1 else math.nan

        def p(margin: float) -> tuple[float, float]:
            return _p_values(w - margin, None, test, n_resamples, seed)
    else:
        delta = float(uc.mean() - ub.mean())
        dof = ub.size + uc.size - 2
        sd = math.sqrt(((ub.size - 1) * ub.var(ddof=1) + (uc.size - 1) * uc.var(ddof=1)) / dof) \
            if ub.size > 1 and uc.size > 1 else math.nan

        def p(margin: float) -> tuple[float, float]:
            return _p_values(uc - margin, ub, test, n_resamples, seed)
    p_reg, p_within = p(m_reg)
    p_imp = p(m_imp)[1] if math.isfinite(m_imp) else 1.0
    ratio = math.exp(-delta if higher_is_better else delta)
    return Evidence(paired, int(ub.size), int(uc.size), ratio, delta, sd, p_reg, p_within, p_imp)


# --- power ------------------------------------------------------------------------------------------------------


def _df_and_scale(n_baseline: int, n_candidate: int, paired: bool) -> tuple[int, float]:
    """Degrees of freedom and the factor that turns the sd into the standard error."""
    if paired:
        return n_baseline - 1, 1 / math.sqrt(n_baseline)
    return n_baseline + n_candidate - 2, math.sqrt(1 / n_baseline + 1 / n_candidate)


def power_of(log_change: float, sd: float, n_baseline: int, n_candidate: int, alpha: float, *,
             paired: bool) -> float:
    """Power of the one-sided t-test at level alpha to show a true shift of
    `log_change` beyond its null: the noncentral t (unpaired: pooled sd and
    n_b + n_c − 2 degrees of freedom, the equal-variance approximation of Welch)."""
    df, scale = _df_and_scale(n_baseline, n_candidate, paired)
    if df < 1 or not math.isfinite(sd):
        return 0.0
    if sd == 0:
        return 1.0 if log_change > 0 else 0.0
    return float(stats.nct.sf(stats.t.isf(alpha, df), df, log_change / (sd * scale)))


def detectable_change(sd: float, n_baseline: int, n_candidate: int, alpha: float, power: float, *,
                      paired: bool) -> float:
    """The minimum detectable change (log scale): the smallest true shift the
    one-sided t-test at level alpha shows with probability `power`. Power depends on
    shift / sd only, so this is sd times a figure solved once per size and level."""
    if not math.isfinite(sd):
        return math.inf
    return 0.0 if sd == 0 else sd * _detectable_per_sd(n_baseline, n_candidate, alpha, power, paired)


@functools.lru_cache(maxsize=4096)
def _detectable_per_sd(n_baseline: int, n_candidate: int, alpha: float, power: float, paired: bool) -> float:
    df, scale = _df_and_scale(n_baseline, n_candidate, paired)
    if df < 1:
        return math.inf

    def gap(shift: float) -> float:
        return power_of(shift, 1.0, n_baseline, n_candidate, alpha, paired=paired) - power

    hi = 2 * (stats.t.isf(alpha, df) + stats.norm.ppf(power)) * scale  # past the root: double until it is
    while gap(hi) < 0:
        hi *= 2
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-12))


def min_attainable_p(n_baseline: int, n_candidate: int, *, paired: bool, test: str) -> float:
    """Smallest p-value the test can give: 0 for t; 2⁻ⁿ (sign flips) or 1/C(n_b+n_c, n_b) (labels)."""
    if test == "t":
        return 0.0
    return 2.0 ** -n_baseline if paired else 1 / math.comb(n_baseline + n_candidate, n_baseline)


def resolves(margin: float, sd: float, n_baseline: int, n_candidate: int, alpha: float, power: float, *,
             paired: bool, test: str) -> bool:
    """Whether a check can decide at this size: the detectable change is within the
    margin (an unchanged candidate then passes with probability ≥ power, one worse by
    margin + that change fails with it) and the test can reach alpha at all."""
    return (detectable_change(sd, n_baseline, n_candidate, alpha, power, paired=paired) <= margin
            and min_attainable_p(n_baseline, n_candidate, paired=paired, test=test) < alpha)


def processes_needed(margin: float, sd: float, alpha: float, power: float, *, paired: bool, test: str,
                     limit: int = 100_000) -> int | None:
    """Processes per side at which the check resolves its margin (None beyond `limit`)."""
    def ok(n: int) -> bool:
        return resolves(margin, sd, n, n, alpha, power, paired=paired, test=test)

    if not math.isfinite(sd) or margin <= 0:
        return None
    lo, hi = 1, 2
    while not ok(hi):  # the detectable change shrinks as n grows: double, then bisect
        lo, hi = hi, hi * 2
        if hi > limit:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


class Outcome(str, enum.Enum):
    REGRESSION = "regression"
    PASS = "pass"
    IMPROVEMENT = "improvement"
    UNDECIDED = "undecided"  # the check resolves its margin, but neither side of it is shown yet
    TOO_NOISY = "too noisy"  # the check cannot resolve its margin at this size: no verdict by luck


def judge(evidence: Evidence, p_regression: float, p_within: float, p_improvement: float, *, alpha: float,
          margin: float, power: float, test: str) -> Outcome:
    """One check at one look, from its (multiplicity-adjusted) p-values."""
    if not resolves(margin, evidence.sd, evidence.n_baseline, evidence.n_candidate, alpha, power,
                    paired=evidence.paired, test=test):
        return Outcome.TOO_NOISY
    if p_regression < alpha:
        return Outcome.REGRESSION
    if p_within < alpha:
        return Outcome.IMPROVEMENT if p_improvement < alpha else Outcome.PASS
    return Outcome.UNDECIDED


# --- sequential looks -------------------------------------------------------------------------------------------


def spent_alpha(fraction: float, alpha: float) -> float:
    """Lan–DeMets O'Brien–Fleming-type spending, one-sided: the alpha spent by
    information fraction t is 2 − 2·Φ(z_{1−α/2} / √t) (α at t = 1, almost none early)."""
    if fraction <= 0:
        return 0.0
    if fraction >= 1:
        return alpha
    return float(2 * stats.norm.sf(stats.norm.isf(alpha / 2) / math.sqrt(fraction)))


def plan_looks(minimum: int, maximum: int, looks: int) -> tuple[int, ...]:
    """Pairs per side at each planned look: `looks` evenly from minimum to maximum."""
    if not 1 <= minimum <= maximum:
        raise ValueError(f"need 1 ≤ minimum ≤ maximum, got {minimum} and {maximum}")
    if looks < 1:
        raise ValueError(f"need at least one look, got {looks}")
    return tuple(sorted({int(round(x)) for x in np.linspace(minimum, maximum, looks)}))


@dataclass(frozen=True)
class Look:
    number: int  # 1-based
    n: int  # pairs (processes per side) tested
    alpha: float  # spent at this look
    final: bool  # no look follows: undecided checks are inconclusive


def schedule(plan: Sequence[int], available: int, alpha: float, *, ended: bool) -> list[Look]:
    """The looks a session with `available` pairs has made, in order.

    Each planned look reached spends its increment of the spending function. A
    session that ended (budget spent) short of the last planned look makes one more
    look at `available` spending all alpha still unspent: its timing came from the
    clock, not from the data, so the union bound still holds."""
    plan = sorted(plan)
    n_max = plan[-1]
    looks, spent = [], 0.0
    for n in plan:
        if n > available:
            break
        increment = spent_alpha(n / n_max, alpha) - spent
        spent += increment
        looks.append(Look(len(looks) + 1, n, increment, n == n_max))
    if ended and (not looks or not looks[-1].final) and available >= 1:
        looks.append(Look(len(looks) + 1, available, alpha - spent, True))
    return looks
