"""Select a candidate and a baseline, pair their runs, check every gated metric.

Selectors (`--candidate` / `--baseline`):

    run:ID[,ID...]    runs by id or unique id prefix
    tag:NAME[,NAME]   runs carrying every listed tag (`effbench run tags=[NAME]`)
    branch:NAME       runs tagged `branch:NAME`, i.e. the newest run of each
                      pair on that branch (CI tags main's runs `branch:main`)
    commit:SHA        runs whose software.effbench_commit starts with SHA
    file:PATH         a JSON export (`effbench export x.json`) or a directory of
                      per-job JSON records (store.url=json:///dir)

Pairing (decided here, see docs/ci-and-cluster.md):

- `names` (default): a pair is model × technique × scenario. Where one side holds
  several configs of one such pair (a sweep over batch sizes), the config keys
  that vary *within* a side are added to the key (e.g. `scenario.batch_size=4`),
  so sweeps pair point by point; so are workload keys (effbench.compare.workload:
  the scenario's keys, data, quality tasks, backend kind) whose values differ
  *between* the sides, since runs of different work are never compared. Any other
  default that changed between the sides (what a pull request does) does not
  split the pair — it is shown as a note. Config hashes would miss those pairs.
- `config`: a pair is one config hash: strict like-for-like, nothing else.
- `ab`: each side is one configuration measured in many processes (`effbench ab`):
  one median per process, processes paired by their `pair:<k>` tags, the looks
  of the session replayed (effbench.gate.process_gate).

On each side the newest run of a key is used; with `pool: runs` (`--pool runs`)
every run of the key is, each contributing one sample — the median of its
repeats — so run-to-run drift, which repeats inside one run cannot show, is in
the test (see docs/results/gate_power.md for when that matters).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from effbench.compare import workload
from effbench.config.schema import NON_IDENTITY_KEYS
from effbench.gate.config import GateConfig, MetricRule
from effbench.gate.stats import (
    MULTIPLICITY,
    Comparison,
    Verdict,
    adjust_for_multiplicity,
    compare_samples,
    compare_values,
    decide,
)
from effbench.metrics.record import Metric, RunRecord, Source, Status
from effbench.store.validate import RecordError

SELECTOR_KINDS = ("run", "tag", "branch", "commit", "file")


class GateUsageError(ValueError):
    """Selectors that select nothing, nothing to pair, a bad file: exit code 2."""


@dataclass(frozen=True)
class Selector:
    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def parse_selector(text: str) -> Selector:
    kind, sep, value = text.partition(":")
    if sep and kind in SELECTOR_KINDS and value:
        return Selector(kind, value)
    if Path(text).exists():
        return Selector("file", text)
    raise GateUsageError(f"cannot read selector {text!r}: use run:ID[,ID], tag:NAME, branch:NAME, commit:SHA "
                         "or file:PATH (a JSON export or a directory of JSON records)")


def load_records_file(path: str | Path) -> list[RunRecord]:
    """Run records from a JSON export, a single-record file, or a directory of them."""
    from effbench.store.records_io import read_records

    path = Path(path)
    try:
        return read_records(path).records
    except RecordError as e:
        raise GateUsageError(f"{path}: {e}") from None


def select_runs(selector: Selector, open_store: Callable[[], Any]) -> list[RunRecord]:
    """The runs a selector names, newest first."""
    if selector.kind == "file":
        runs = load_records_file(selector.value)
    elif selector.kind == "run":
        store = open_store()
        try:
            runs = [store.get(i.strip()) for i in selector.value.split(",") if i.strip()]
        except KeyError as e:
            raise GateUsageError(e.args[0]) from None
    elif selector.kind in ("tag", "branch"):
        tags = [t.strip() for t in selector.value.split(",") if t.strip()] if selector.kind == "tag" \
            else [f"branch:{selector.value}"]
        runs = [r for r in open_store().runs(tag=tags[0]) if set(tags[1:]) <= set(r.tags)]
    else:  # commit
        if len(selector.value) < 4:
            raise GateUsageError(f"commit:{selector.value}: give at least 4 characters of the commit")
        runs = [r for r in open_store().runs()
                if str((r.software or {}).get("effbench_commit") or "").startswith(selector.value)]
    if not runs:
        raise GateUsageError(f"{selector} selects no runs")
    return sorted(runs, key=lambda r: (r.created_at, r.id), reverse=True)


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys of what is measured (store, rerun, tags left out)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(value, sort_keys=True)

    walk("", {k: v for k, v in config.items() if k not in NON_IDENTITY_KEYS})
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any], limit: int = 3) -> str:
    fa, fb = flat_config(a), flat_config(b)
    keys = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
    shown = [f"{k}: {fa.get(k, '–')} → {fb.get(k, '–')}" for k in keys[:limit]]
    return "; ".join(shown) + (f"; +{len(keys) - limit} more" if len(keys) > limit else "")


@dataclass
class Pair:
    label: str
    baseline: RunRecord | None  # the newest run of the pair on each side
    candidate: RunRecord | None
    notes: list[str] = field(default_factory=list)
    baseline_runs: list[RunRecord] = field(default_factory=list)  # every run of the pair, newest first
    candidate_runs: list[RunRecord] = field(default_factory=list)
    # Baseline only, but the candidate has other configs of this model × technique × scenario
    # (an older variant in the baseline's history): a note, not a missing run.
    superseded: bool = False


def pair_runs(baseline: list[RunRecord], candidate: list[RunRecord], match: str = "names") -> list[Pair]:
    """Match the two sides' runs (newest first on each side) into pairs."""
    sides = {"baseline": baseline, "candidate": candidate}
    keyed: dict[str, dict[tuple, list[RunRecord]]] = {"baseline": defaultdict(list), "candidate": defaultdict(list)}
    labels: dict[tuple, str] = {}
    if match == "config":
        for side, runs in sides.items():
            for r in runs:
                key = (r.config_hash,)
                keyed[side][key].append(r)
                labels.setdefault(key, f"{r.model} × {r.technique} × {r.scenario} [{r.config_hash[:8]}]")
    else:
        groups: dict[tuple, dict[str, list[RunRecord]]] = defaultdict(lambda: {"baseline": [], "candidate": []})
        for side, runs in sides.items():
            for r in runs:
                groups[(r.model, r.technique, r.scenario)][side].append(r)
        for name, by_side in groups.items():
            varying: set[str] = set()
            flats = {side: [flat_config(r.config) for r in runs] for side, runs in by_side.items()}
            for fl in flats.values():
                for k in {k for f in fl for k in f}:
                    if len({f.get(k) for f in fl}) > 1:
                        varying.add(k)
            # The work must match across the sides too: a workload key (effbench.compare) that
            # every run records, with values that differ (a changed default prompt length, another
            # rate), splits the pair, while a key only one side has (a knob a change added) does not.
            works = [workload(r.config) for runs in by_side.values() for r in runs]
            shared = set.intersection(*(set(w) for w in works)) if works else set()
            varying |= {k for k in shared if len({json.dumps(w[k], sort_keys=True, default=str) for w in works}) > 1}
            varying_sorted = sorted(varying)
            for side, runs in by_side.items():
                for r, f in zip(runs, flats[side], strict=True):
                    sub = tuple((k, f.get(k, "null")) for k in varying_sorted)
                    key = (*name, sub)
                    keyed[side][key].append(r)  # newest first
                    extra = ", ".join(f"{k}={v}" for k, v in sub)
                    labels.setdefault(key, f"{name[0]} × {name[1]} × {name[2]}" + (f" [{extra}]" if extra else ""))
    pairs = []
    for key in sorted(keyed["baseline"].keys() | keyed["candidate"].keys(), key=lambda k: labels[k]):
        b_runs, c_runs = keyed["baseline"].get(key, []), keyed["candidate"].get(key, [])
        b, c = (b_runs or [None])[0], (c_runs or [None])[0]
        pair = Pair(labels[key], b, c, baseline_runs=b_runs, candidate_runs=c_runs)
        if b is not None and c is not None and b.config_hash != c.config_hash:
            pair.notes.append(f"configs differ ({config_diff(b.config, c.config)})")
        pairs.append(pair)
    in_candidate = {(r.model, r.technique, r.scenario) for r in candidate}
    for pair in pairs:
        b = pair.baseline
        pair.superseded = pair.candidate is None and (b.model, b.technique, b.scenario) in in_candidate
    return pairs


@dataclass
class CheckResult:
    pair: str
    metric: str
    verdict: Verdict
    unit: str = ""
    baseline: float | None = None  # median of the samples (value for deterministic figures)
    candidate: float | None = None
    ratio: float = math.nan
    tolerance: float | None = None
    higher_is_better: bool | None = None
    n_baseline: int = 0
    n_candidate: int = 0
    detail: str = ""
    estimated: bool = False
    comparison: Comparison | None = None
    pooled: bool = False  # samples are one median per run (pool: runs)
    alpha: float | None = None  # the level the check was tested at (before multiplicity control)
    detectable: float | None = None  # process checks: the minimum detectable change at the N reached
    needed: int | None = None  # process checks too noisy for the tolerance: processes per side it needs

    @property
    def change(self) -> float:
        """Relative change of candidate vs baseline (+0.10 = 10% larger)."""
        return self.ratio - 1 if math.isfinite(self.ratio) else math.nan


@dataclass
class GateResult:
    checks: list[CheckResult]
    notes: list[str]
    gate: GateConfig
    candidate: str
    baseline: str
    n_pairs: int
    multiplicity: str = ""  # how the false alarms of the whole set of checks are controlled
    design: str = ""  # process-level gates: pairing, test, look and alpha spent
    resolution: list[str] = field(default_factory=list)  # "this runner resolves ≥ 7% TPOT changes ..."
    decided: bool = True  # process-level gates: a regression shown, or every testable check decided

    def count(self, verdict: Verdict) -> int:
        return sum(c.verdict is verdict for c in self.checks)

    @property
    def regressions(self) -> list[CheckResult]:
        return [c for c in self.checks if c.verdict is Verdict.REGRESSION]

    @property
    def inconclusive(self) -> list[CheckResult]:
        return [c for c in self.checks if c.verdict is Verdict.INCONCLUSIVE]

    def exit_code(self, strict: bool = False) -> int:
        """0 pass, 1 regression (or, with strict, anything inconclusive or no check at all)."""
        if self.regressions or (strict and (self.inconclusive or not self.checks)):
            return 1
        return 0

    @property
    def passed(self) -> bool:
        return not self.regressions


def metric_median(m: Metric) -> float:
    return float(np.median(m.samples)) if m.samples else m.value


def direction(rule: MetricRule, base: Metric, cand: Metric) -> bool | None:
    """The gate file's direction, else the stored metrics'."""
    for hib in (rule.higher_is_better, cand.higher_is_better, base.higher_is_better):
        if hib is not None:
            return hib
    return None


def not_comparable(hib: bool | None, base: Metric, cand: Metric, same_hardware: bool) -> str | None:
    """Why two figures cannot be tested against each other, or None."""
    if hib is None:
        return "no direction: set higher_is_better for this metric in the gate file"
    if (base.source is Source.ESTIMATED) != (cand.source is Source.ESTIMATED):
        return (f"source mismatch: {base.source.value} baseline vs {cand.source.value} candidate "
                "(an estimate is not comparable with a measurement)")
    if not same_hardware and not is_deterministic(base, cand):
        return "measured on different hardware: not comparable"
    return None


def is_deterministic(base: Metric, cand: Metric) -> bool:
    return base.source is Source.ANALYTIC and cand.source is Source.ANALYTIC


def check_metric(pair: str, rule: MetricRule, base: Metric, cand: Metric, gate: GateConfig,
                 same_hardware: bool = True, samples: tuple[list[float], list[float]] | None = None) -> CheckResult:
    """One metric of one pair, at the raw alpha (evaluate then controls the whole set).
    `samples` (baseline, candidate) replaces the two metrics' repeat samples, e.g.
    with one median per run (pool: runs)."""
    hib = direction(rule, base, cand)
    estimated = Source.ESTIMATED in (base.source, cand.source)
    b_med, c_med = metric_median(base), metric_median(cand)
    result = CheckResult(pair, rule.name, Verdict.INCONCLUSIVE, cand.unit or base.unit, b_med, c_med,
                         c_med / b_med if b_med else math.nan, rule.tolerance, hib, len(base.samples),
                         len(cand.samples), estimated=estimated, pooled=samples is not None)
    if samples is not None:
        result.baseline, result.candidate = float(np.median(samples[0])), float(np.median(samples[1]))
        result.ratio = result.candidate / result.baseline if result.baseline else math.nan
        result.n_baseline, result.n_candidate = len(samples[0]), len(samples[1])
    reason = not_comparable(hib, base, cand, same_hardware)
    if reason:
        result.detail = reason
        return result
    deterministic = is_deterministic(base, cand)
    if deterministic:
        comp = compare_values(base.value, cand.value, tolerance=rule.tolerance, higher_is_better=hib)
        result.baseline, result.candidate = base.value, cand.value
    else:
        b_samples, c_samples = samples if samples is not None else (base.samples, cand.samples)
        result.alpha = rule.alpha or gate.alpha
        comp = compare_samples(b_samples, c_samples, tolerance=rule.tolerance, higher_is_better=hib,
                               alpha=result.alpha, min_samples=rule.min_samples or gate.min_samples,
                               method=gate.method, n_resamples=gate.n_resamples, seed=gate.seed)
    _set_comparison(result, comp)
    return result


def _set_comparison(result: CheckResult, comp: Comparison) -> None:
    result.verdict, result.ratio, result.comparison = comp.verdict, comp.ratio, comp
    result.detail = comp.reason + (" (estimated figures)" if result.estimated else "")
    if result.pooled and comp.method != "value":
        result.detail = "run medians: " + result.detail.replace("raise scenario.repeats", "run each side more times") \
            .replace("add repeats or rerun", "run each side more times")


def control_false_alarms(checks: list[CheckResult]) -> str:
    """Benjamini–Hochberg over every tested check's two p-values; each check's
    verdict is decided again with its adjusted p-values. Returns the summary line."""
    tested = [c for c in checks if c.comparison is not None and c.comparison.p_regression is not None]
    if not tested:
        return ""
    p_reg = adjust_for_multiplicity([c.comparison.p_regression for c in tested])
    p_imp = adjust_for_multiplicity([c.comparison.p_improvement for c in tested])
    for c, pr, pi in zip(tested, p_reg, p_imp, strict=True):
        _set_comparison(c, decide(c.comparison.ratio, c.tolerance, pr, pi, c.alpha, c.comparison.method,
                                  c.comparison.interval, adjusted=len(tested) > 1))
    return f"{MULTIPLICITY}: {len(tested)} tested checks"


def run_medians(runs: list[RunRecord], metric: str, hardware: Any) -> list[float]:
    """One sample per ok run of a pair on the newest run's hardware: the median of its repeats."""
    out = []
    for r in runs:
        if r.status is Status.OK and r.hardware.get("label") == hardware:
            m = next((m for m in r.metrics if m.name == metric), None)
            if m is not None:
                out.append(metric_median(m))
    return out


def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def evaluate(pairs: Iterable[Pair], gate: GateConfig, candidate: str = "candidate",
             baseline: str = "baseline") -> GateResult:
    checks: list[CheckResult] = []
    notes: list[str] = []
    pairs = list(pairs)
    compared = 0
    used_rules: set[str] = set()
    for p in pairs:
        for n in p.notes:
            notes.append(f"{p.label}: {n}")
        if p.candidate is None and p.superseded:
            notes.append(f"{p.label}: only in the baseline; the candidate ran other configs of this pair")
            continue
        if p.candidate is None:
            checks.append(CheckResult(p.label, "run", Verdict.INCONCLUSIVE,
                                      detail=f"no candidate run (baseline {p.baseline.id[:8]})"))
            continue
        if p.baseline is None:
            notes.append(f"{p.label}: new in the candidate ({p.candidate.id[:8]}), no baseline to compare")
            continue
        compared += 1
        b, c = p.baseline, p.candidate
        if c.status is not Status.OK or b.status is not Status.OK:
            if c.status is Status.FAILED and b.status is Status.OK:
                checks.append(CheckResult(p.label, "run", Verdict.REGRESSION,
                                          detail=f"candidate run {c.id[:8]} failed: {first_line(c.error)}"))
            else:
                checks.append(CheckResult(p.label, "run", Verdict.INCONCLUSIVE,
                                          detail=f"baseline {b.status.value}, candidate {c.status.value}"))
            continue
        bm, cm = {m.name: m for m in b.metrics}, {m.name: m for m in c.metrics}
        same_hw = b.hardware.get("label") == c.hardware.get("label")
        if not same_hw:
            notes.append(f"{p.label}: hardware differs ({b.hardware.get('label')} vs {c.hardware.get('label')}); "
                         "only deterministic figures are compared")
        for rule in gate.rules:
            if rule.name not in bm and rule.name not in cm:
                continue  # not a figure of this scenario
            used_rules.add(rule.name)
            if rule.name not in bm or rule.name not in cm:
                side = "baseline" if rule.name not in bm else "candidate"
                checks.append(CheckResult(p.label, rule.name, Verdict.INCONCLUSIVE, tolerance=rule.tolerance,
                                          detail=f"missing in the {side}"))
                continue
            pooled = None
            if gate.pool == "runs":
                pooled = (run_medians(p.baseline_runs, rule.name, b.hardware.get("label")),
                          run_medians(p.candidate_runs, rule.name, c.hardware.get("label")))
            checks.append(check_metric(p.label, rule, bm[rule.name], cm[rule.name], gate, same_hw, pooled))
    if compared == 0:
        n_b = sum(p.baseline is not None for p in pairs)
        n_c = sum(p.candidate is not None for p in pairs)
        raise GateUsageError(f"no pair is in both the candidate ({n_c} pairs) and the baseline ({n_b} pairs): "
                             f"nothing to compare (pairing by {gate.match})")
    notes += unused_rule_notes(gate, used_rules)
    multiplicity = control_false_alarms(checks)
    return GateResult(checks, notes, gate, candidate, baseline, compared, multiplicity=multiplicity)


def unused_rule_notes(gate: GateConfig, used_rules: set[str]) -> list[str]:
    return [f"{rule.name}: gated but recorded by no compared pair"
            for rule in (gate.rules if gate.source != "built-in defaults" else ()) if rule.name not in used_rules]


def run_gate(candidate: str | Selector | list[RunRecord], baseline: str | Selector | list[RunRecord],
             gate: GateConfig, open_store: Callable[[], Any] | None = None) -> GateResult:
    """Select both sides (selector strings, Selectors or lists of records), pair, check."""
    def side(spec) -> tuple[list[RunRecord], str]:
        if isinstance(spec, list):
            return spec, f"{len(spec)} runs"
        sel = spec if isinstance(spec, Selector) else parse_selector(spec)
        if open_store is None and sel.kind != "file":
            raise GateUsageError(f"{sel} needs a results store")
        return select_runs(sel, open_store), str(sel)

    cand, cand_desc = side(candidate)
    base, base_desc = side(baseline)
    if gate.match == "ab":
        from effbench.gate.process_gate import evaluate_processes  # builds on this module

        return evaluate_processes(base, cand, gate, cand_desc, base_desc)
    return evaluate(pair_runs(base, cand, gate.match), gate, cand_desc, base_desc)
