"""The gate over runs made one per process (`effbench ab`, `effbench gate --match ab`).

Each side is one configuration measured by fresh processes; a process's figure
is the median of its repeats (effbench.gate.process_stats says why). Processes
pair by their `pair:<k>` tags — the baseline and candidate process that ran next
to each other — or, without tags, are compared unpaired. A session's planned
looks (its `ab-looks:` tag) are replayed in order, each at the alpha the
spending function releases, with Benjamini–Hochberg across the checks of the
look; the first look at which a regression is shown or every testable check is
decided gives the verdicts. So a gate that re-reads a finished session's runs
reaches the verdicts the session reached.

Verdicts are power-aware: a check whose minimum detectable change (from the
measured spread of its log ratios) is larger than its tolerance is
*inconclusive: runner too noisy for this tolerance*, with the number of
processes it would need — never a pass or a regression by luck.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from effbench.gate.config import GateConfig, MetricRule
from effbench.gate.core import (
    CheckResult,
    GateResult,
    GateUsageError,
    config_diff,
    direction,
    first_line,
    is_deterministic,
    metric_median,
    not_comparable,
    unused_rule_notes,
)
from effbench.gate.process_stats import (
    TEST_NAMES,
    UNPAIRED_TEST_NAMES,
    Evidence,
    Look,
    Outcome,
    detectable_change,
    format_change,
    judge,
    margins,
    min_attainable_p,
    process_evidence,
    processes_needed,
    relative,
    schedule,
)
from effbench.gate.options import LOOKS_TAG, PAIR_TAG
from effbench.gate.stats import Comparison, Verdict, adjust_for_multiplicity, compare_values
from effbench.metrics.record import Metric, RunRecord, Source, Status



def tag_value(run: RunRecord, prefix: str) -> str | None:
    return next((t[len(prefix):] for t in run.tags if t.startswith(prefix)), None)


def session_plan(runs: Sequence[RunRecord]) -> tuple[int, ...] | None:
    """The planned looks stored with a session's runs, or None (a single look)."""
    values = {tag_value(r, LOOKS_TAG) for r in runs}
    if values <= {None}:  # untagged, or no run at all (every run of the session failed)
        return None
    if len(values) != 1:
        raise GateUsageError(f"the runs come from sessions with different planned looks ({sorted(map(str, values))}): "
                             "select one session (tag:ab:ID,side:A)")
    try:
        return tuple(int(n) for n in values.pop().split("/"))
    except ValueError:
        raise GateUsageError(f"unreadable {LOOKS_TAG} tag on the runs") from None


def _describe(run: RunRecord) -> str:
    return f"{run.model} × {run.technique} × {run.scenario}"


def _one_config(runs: list[RunRecord], side: str) -> None:
    hashes = {r.config_hash for r in runs}
    if len(hashes) > 1:
        raise GateUsageError(f"the {side} holds {len(hashes)} configurations; --match ab compares one configuration "
                             "per side, measured in many processes (select one side of one session: "
                             "tag:ab:ID,side:A)")


def _pair_index(run: RunRecord) -> int | None:
    value = tag_value(run, PAIR_TAG)
    return int(value) if value is not None and value.isdigit() else None


def _pairs(baseline: list[RunRecord], candidate: list[RunRecord]) -> list[tuple[RunRecord, RunRecord]] | None:
    """Baseline and candidate processes with the same pair index, in index order;
    None when some process has no pair tag (then the test is unpaired)."""
    if any(_pair_index(r) is None for r in (*baseline, *candidate)):
        return None
    by_side = []
    for side, runs in (("baseline", baseline), ("candidate", candidate)):
        indices = [_pair_index(r) for r in runs]
        if len(set(indices)) != len(indices):
            raise GateUsageError(f"the {side} has two processes with the same pair tag: select one session "
                                 "(tag:ab:ID,side:A)")
        by_side.append({_pair_index(r): r for r in runs})
    return [(by_side[0][k], by_side[1][k]) for k in sorted(by_side[0].keys() & by_side[1].keys())]


@dataclass
class _Sides:
    """The ok processes of both sides, paired (index order) or not."""

    baseline: list[RunRecord]
    candidate: list[RunRecord]
    paired: bool

    def at(self, n: int) -> tuple[list[RunRecord], list[RunRecord]]:
        """The first n pairs (paired), or every process (unpaired)."""
        return (self.baseline[:n], self.candidate[:n]) if self.paired else (self.baseline, self.candidate)

    @property
    def available(self) -> int:
        return len(self.baseline) if self.paired else min(len(self.baseline), len(self.candidate))


def _figures(runs: list[RunRecord], name: str) -> list[Metric | None]:
    return [next((m for m in r.metrics if m.name == name), None) for r in runs]


@dataclass
class _Check:
    """One metric at one look: its result and, if it was tested, its evidence."""

    result: CheckResult
    evidence: Evidence | None = None
    margin: float = math.nan
    decided: bool = True


def _check(label: str, rule: MetricRule, base_runs: list[RunRecord], cand_runs: list[RunRecord], paired: bool,
           gate: GateConfig, same_hardware: bool) -> _Check | None:
    bm, cm = _figures(base_runs, rule.name), _figures(cand_runs, rule.name)
    in_b, in_c = any(m is not None for m in bm), any(m is not None for m in cm)
    if not in_b and not in_c:
        return None  # not a figure of this scenario
    if not in_b or not in_c:
        return _Check(CheckResult(label, rule.name, Verdict.INCONCLUSIVE, tolerance=rule.tolerance,
                                  detail=f"missing in the {'baseline' if not in_b else 'candidate'}"))
    if paired:  # keep the pairs in which both processes recorded the metric
        kept = [(b, c) for b, c in zip(bm, cm, strict=True) if b is not None and c is not None]
        bm, cm = [b for b, _ in kept], [c for _, c in kept]
    else:
        bm, cm = [m for m in bm if m is not None], [m for m in cm if m is not None]
    if not bm:
        return _Check(CheckResult(label, rule.name, Verdict.INCONCLUSIVE, tolerance=rule.tolerance,
                                  detail="no pair in which both processes recorded it"))
    base_fig, cand_fig = [metric_median(m) for m in bm], [metric_median(m) for m in cm]
    ref_b, ref_c = bm[0], cm[0]
    hib = direction(rule, ref_b, ref_c)
    result = CheckResult(label, rule.name, Verdict.INCONCLUSIVE, ref_c.unit or ref_b.unit,
                         float(np.median(base_fig)), float(np.median(cand_fig)), math.nan, rule.tolerance, hib,
                         len(bm), len(cm), estimated=Source.ESTIMATED in (ref_b.source, ref_c.source))
    reason = not_comparable(hib, ref_b, ref_c, same_hardware)
    if reason:
        result.detail = reason
        return _Check(result)
    if is_deterministic(ref_b, ref_c):
        comp = compare_values(result.baseline, result.candidate, tolerance=rule.tolerance, higher_is_better=hib)
        result.verdict, result.ratio, result.comparison, result.detail = comp.verdict, comp.ratio, comp, comp.reason
        return _Check(result)
    evidence = process_evidence(base_fig, cand_fig, tolerance=rule.tolerance, higher_is_better=hib, paired=paired,
                                test=gate.process_test, n_resamples=gate.n_resamples, seed=gate.seed)
    result.ratio = evidence.ratio
    return _Check(result, evidence, margins(rule.tolerance, hib)[0], decided=False)


_VERDICTS = {Outcome.REGRESSION: Verdict.REGRESSION, Outcome.PASS: Verdict.PASS,
             Outcome.IMPROVEMENT: Verdict.IMPROVEMENT}


def _judge(check: _Check, p_reg: float, p_within: float, p_imp: float, alpha: float, total_alpha: float,
           gate: GateConfig, adjusted: bool) -> None:
    """The verdict of one tested check at a look tested at `alpha` (of `total_alpha`
    over all looks), from its adjusted p-values, with the reason in words."""
    ev, c = check.evidence, check.result
    outcome = judge(ev, p_reg, p_within, p_imp, alpha=alpha, margin=check.margin, power=gate.power,
                    test=gate.process_test)
    check.decided = outcome in _VERDICTS
    c.verdict, c.alpha = _VERDICTS.get(outcome, Verdict.INCONCLUSIVE), alpha
    c.detectable = relative(detectable_change(ev.sd, ev.n_baseline, ev.n_candidate, alpha, gate.power,
                                              paired=ev.paired))
    size = f"{ev.n} pairs" if ev.paired else f"{ev.n_baseline} + {ev.n_candidate} processes"
    sign = "-" if c.higher_is_better else "+"
    resolution = f"resolves ≥ {format_change(c.detectable)} at {gate.power:.0%} power"
    if outcome is Outcome.TOO_NOISY:
        c.needed = processes_needed(check.margin, ev.sd, total_alpha, gate.power, paired=ev.paired,
                                    test=gate.process_test)
        floor = min_attainable_p(ev.n_baseline, ev.n_candidate, paired=ev.paired, test=gate.process_test)
        if not math.isfinite(ev.sd):
            c.detail = f"runner too noisy for this tolerance: {size} cannot show the spread between processes " \
                       "(run at least 2 pairs)"
        else:
            why = (f"the {gate.process_test} test cannot reach p < {alpha:.3g} with {size} (smallest p {floor:.3g})"
                   if floor >= alpha else f"{resolution} with {size}")
            need = (f"≈ {c.needed} processes per side (one look at alpha {total_alpha})" if c.needed
                    else "more processes than is practical")
            c.detail = f"runner too noisy for this tolerance: {why}; {sign}{c.tolerance:.1%} needs {need}"
    else:
        p = "adjusted p" if adjusted else "p"
        why = {Outcome.REGRESSION: f"worse by more than {c.tolerance:.1%}: {p}={p_reg:.3g}",
               Outcome.IMPROVEMENT: f"better by more than {c.tolerance:.1%}: {p}={p_imp:.3g}",
               Outcome.PASS: f"within {sign}{c.tolerance:.1%}: {p}={p_within:.3g}",
               Outcome.UNDECIDED: f"neither worse nor within {sign}{c.tolerance:.1%} shown "
                                  f"({p}_regression={p_reg:.3g}, {p}_within={p_within:.3g})"}[outcome]
        c.detail = f"{why} ({size}; {resolution})" + (" (estimated figures)" if c.estimated else "")
    c.comparison = Comparison(c.verdict, c.ratio, c.detail, p_reg, p_imp, method=gate.process_test)


def _look(sides: _Sides, look: Look, gate: GateConfig, label: str, same_hardware: bool) -> tuple[list[_Check], str]:
    base_runs, cand_runs = sides.at(look.n)
    checks = [c for rule in gate.rules
              if (c := _check(label, rule, base_runs, cand_runs, sides.paired, gate, same_hardware)) is not None]
    tested = [c for c in checks if c.evidence is not None]
    adjusted = [adjust_for_multiplicity([getattr(c.evidence, p) for c in tested])
                for p in ("p_regression", "p_within", "p_improvement")]
    for i, check in enumerate(tested):
        rule = next(r for r in gate.rules if r.name == check.result.metric)
        # A rule's own alpha is spent in the same proportions as the gate's.
        total = rule.alpha or gate.alpha
        _judge(check, adjusted[0][i], adjusted[1][i], adjusted[2][i], look.alpha * total / gate.alpha, total, gate,
               len(tested) > 1)
    multiplicity = (f"Benjamini–Hochberg over the {len(tested)} tested checks of the look (false discovery rate ≤ "
                    "the look's alpha); the looks' alphas add up to alpha (union bound)") if tested else ""
    return checks, multiplicity


def _failures(baseline: list[RunRecord], candidate: list[RunRecord], label: str) -> list[CheckResult]:
    out = []
    failed_c = [r for r in candidate if r.status is not Status.OK]
    failed_b = [r for r in baseline if r.status is not Status.OK]
    if failed_c and any(r.status is Status.OK for r in baseline):
        r = failed_c[0]
        verdict = Verdict.REGRESSION if r.status is Status.FAILED else Verdict.INCONCLUSIVE
        out.append(CheckResult(label, "run", verdict, detail=f"{len(failed_c)} candidate process(es) {r.status.value}, "
                                                             f"e.g. {r.id[:8]}: {first_line(r.error)}"))
    if failed_b:
        r = failed_b[0]
        out.append(CheckResult(label, "run", Verdict.INCONCLUSIVE,
                               detail=f"{len(failed_b)} baseline process(es) {r.status.value}, e.g. {r.id[:8]}: "
                                      f"{first_line(r.error)}"))
    return out


def evaluate_processes(baseline: list[RunRecord], candidate: list[RunRecord], gate: GateConfig,
                       candidate_desc: str = "candidate", baseline_desc: str = "baseline", *,
                       ended: bool = True) -> GateResult:
    """Replay a session's looks over its runs (see the module docstring). `ended`:
    no more processes will come (a gate re-reading runs; a session out of budget)."""
    _one_config(baseline, "baseline")
    _one_config(candidate, "candidate")
    b0, c0 = baseline[0], candidate[0]
    label = _describe(c0) if _describe(b0) == _describe(c0) else f"{_describe(b0)} → {_describe(c0)}"
    notes = [] if b0.config_hash == c0.config_hash else [f"configs differ ({config_diff(b0.config, c0.config)})"]
    failures = _failures(baseline, candidate, label)
    ok_b = sorted((r for r in baseline if r.status is Status.OK), key=lambda r: (r.created_at, r.id))
    ok_c = sorted((r for r in candidate if r.status is Status.OK), key=lambda r: (r.created_at, r.id))
    pairs = _pairs(ok_b, ok_c)
    if pairs is None:
        sides = _Sides(ok_b, ok_c, paired=False)
        notes.append("processes carry no pair tags: unpaired test, one look")
        plan = None
    else:
        sides = _Sides([b for b, _ in pairs], [c for _, c in pairs], paired=True)
        plan = session_plan([*ok_b, *ok_c])
    hardware = {r.hardware.get("label") for r in (*ok_b, *ok_c)}
    same_hardware = len(hardware) <= 1
    if not same_hardware:
        notes.append(f"hardware differs between processes ({', '.join(sorted(map(str, hardware)))}); "
                     "only deterministic figures are compared")
    if sides.available == 0:
        if failures:
            return GateResult(failures, notes, gate, candidate_desc, baseline_desc, 1)
        raise GateUsageError("no complete pair of ok processes to compare")
    looks = schedule(plan or (sides.available,), sides.available, gate.alpha, ended=ended)
    checks, multiplicity, look = [], "", None
    for look in looks:
        checks, multiplicity = _look(sides, look, gate, label, same_hardware)
        if any(c.result.verdict is Verdict.REGRESSION for c in checks) or all(c.decided for c in checks):
            break
    results = failures + [c.result for c in checks]
    # Decided: a regression shown (a failed candidate process is one), or every check decided at a look.
    decided = any(c.verdict is Verdict.REGRESSION for c in results) or \
        (look is not None and all(c.decided for c in checks))
    test = (TEST_NAMES if sides.paired else UNPAIRED_TEST_NAMES)[gate.process_test]
    design = ""
    if look is not None:
        size = f"{look.n} pairs" if sides.paired else f"{len(ok_b)} + {len(ok_c)} processes"
        planned = f" of {len(plan)} planned" if plan else ""
        design = (f"one median per process, {'paired by pair tag' if sides.paired else 'unpaired'}, {test}; "
                  f"look {look.number}{planned} at {size}, alpha {look.alpha:.3g} of {gate.alpha} "
                  "(Lan–DeMets O'Brien–Fleming-type spending)")
    resolution = [f"this runner resolves ≥ {format_change(c.result.detectable)} changes of {c.result.metric} at "
                  f"{gate.power:.0%} power with {c.evidence.n} {'pairs' if sides.paired else 'processes per side'} "
                  f"(sd of the log {'ratios' if sides.paired else 'figures'} {c.evidence.sd:.1%})"
                  for c in checks if c.evidence is not None and c.result.detectable is not None
                  and math.isfinite(c.result.detectable)]
    notes += unused_rule_notes(gate, {c.result.metric for c in checks})
    return GateResult(results, notes, gate, candidate_desc, baseline_desc, 1, multiplicity=multiplicity,
                      design=design, resolution=resolution, decided=decided)
