"""What may be compared with what, and when a difference is real: the one set of
rules the leaderboard, `effbench compare`, `effbench list` / `show` and the gate share.

- **Workload** (`workload`): the config keys that define the work a run measures —
  the scenario and its keys (batch, prompt, output, rate, profile, SLOs, …), the data,
  the quality tasks and the backend kind. Runs of different workloads never share a
  rank, a bar, a plot or a verdict; hardware is the other half of a peer group.
- **Figure** (`Figure`): a headline value with the 95% interval *of that figure*: the
  median's (distribution-free, from 6 samples on), or the mean's where the mean is
  shown (AL). Analytic figures (counted, computed) are exact: their interval is the
  point. Below 6 samples a median has no interval, and none is invented.
- **Practical significance** (`real_difference`): a difference is real only when each
  figure lies outside the other's interval *and* they differ by more than the metric's
  relative threshold (`MetricSpec.practical`). Within the threshold it is a tie however
  tight the intervals; beyond it without intervals, it is undecided.
- **Sanity flags** (`flags`): invalid figures, FLOPs far below the analytic count,
  runtime-dominated CPU memory, estimated energy — marked wherever the figure appears.

The reasons behind each rule and threshold: docs/leaderboard.md.
"""

from __future__ import annotations

import enum
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from effbench.metrics.catalog import CATALOG, PRACTICAL_DEFAULT, RUNTIME_DOMINATED_SHARE
from effbench.metrics.record import MIN_SAMPLES_MEDIAN_CI

if TYPE_CHECKING:
    from effbench.metrics.record import Metric, RunRecord

# ------------------------------------------------------------------------------ workload

# Scenario keys that set how a measurement is taken, not what is measured: runs that
# differ only in these measure the same work (more repeats only narrow the interval).
PROTOCOL_KEYS = frozenset({"repeats", "warmup", "warmup_max", "save_artifact"})
# Quality keys that change the quality figures, when there are tasks at all.
QUALITY_KEYS = ("tasks", "num_fewshot", "limit")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested mapping; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def workload(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat config keys that define the work of a run (see the module docstring)."""
    scenario = {k: v for k, v in (config.get("scenario") or {}).items() if k not in PROTOCOL_KEYS}
    out = flatten(scenario, "scenario.")
    out.update(flatten(config.get("data") or {}, "data."))
    quality = config.get("quality") or {}
    if quality.get("tasks"):
        out.update({f"quality.{k}": sorted(quality[k]) if k == "tasks" else quality.get(k) for k in QUALITY_KEYS})
    kind = (config.get("backend") or {}).get("kind")
    if kind is not None:
        out["backend.kind"] = kind
    return out


def workload_key(config: Mapping[str, Any]) -> str:
    """The workload as a canonical string: equal strings, equal work."""
    return json.dumps(workload(config), sort_keys=True, default=str)


def differing(workloads: Iterable[Mapping[str, Any]]) -> list[str]:
    """Keys whose value is not the same in all these flat workloads (a missing key differs)."""
    workloads = list(workloads)
    keys = {k for w in workloads for k in w}
    return sorted(k for k in keys
                  if len({json.dumps(w[k], default=str) if k in w else "\0missing" for w in workloads}) > 1)


def short_key(key: str) -> str:
    return key.removeprefix("scenario.")


def describe(w: Mapping[str, Any], keys: Iterable[str]) -> str:
    """`batch_size=8, prompt_tokens=64`: the given keys of one flat workload."""
    return ", ".join(f"{short_key(k)}={_text(w.get(k, '–'))}" for k in keys)


def workload_diff(a: Mapping[str, Any], b: Mapping[str, Any], limit: int = 3) -> str:
    """`batch_size 1 ≠ 8; prompt_tokens 128 ≠ 64`: where two flat workloads differ."""
    keys = differing([a, b])
    shown = [f"{short_key(k)} {_text(a.get(k, '–'))} ≠ {_text(b.get(k, '–'))}" for k in keys[:limit]]
    return "; ".join(shown) + (f"; +{len(keys) - limit} more" if len(keys) > limit else "")


def _text(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def engine(config: Mapping[str, Any]) -> str:
    """How the model was served: `hf (in-process)`, or the server a run drove over HTTP
    (`openai: transformers serve`, `openai: vllm serve`, `openai: http://host:8000`)."""
    backend = config.get("backend") or {}
    kind = backend.get("kind", "hf")
    if kind == "hf":
        return "hf (in-process)"
    command = (backend.get("server") or {}).get("command")
    return f"{kind}: {_program(command) if command else backend.get('url') or 'server'}"


def _program(command: str) -> str:
    """The program words of a server command: `{python} -m transformers.cli.transformers serve {model} …`
    → `transformers serve`."""
    words = [w for w in command.split() if w not in ("{python}", "-m")]
    head = []
    for w in words:
        if w.startswith(("{", "-")):
            break
        head.append(w.rsplit("/", 1)[-1])
    if head and "." in head[0] and len(head) > 1:  # a module path before its subcommand
        head[0] = head[0].rsplit(".", 1)[-1]
    return " ".join(head) or command.split()[0]


@dataclass(frozen=True)
class RunKey:
    """What must match for two runs to be compared: scenario and workload (and, for
    figures that are not exact, the hardware)."""

    scenario: str
    workload: dict[str, Any]
    hardware: str | None

    @classmethod
    def of(cls, record: RunRecord) -> RunKey:
        return cls(record.scenario, workload(record.config), (record.hardware or {}).get("label"))


def not_comparable(base: RunKey, other: RunKey) -> str | None:
    """Why two runs' figures cannot be judged against each other, or None."""
    if base.scenario != other.scenario:
        return f"scenario {base.scenario} ≠ {other.scenario}"
    if base.workload != other.workload:
        return f"workload differs: {workload_diff(base.workload, other.workload)}"
    return None


# ------------------------------------------------------------------------------- figures

FEW_REPEATS = f"too few repeats for an interval (n<{MIN_SAMPLES_MEDIAN_CI})"


@dataclass(frozen=True)
class Figure:
    """A headline value and the 95% interval of that very figure (None: there is none)."""

    value: float
    interval: tuple[float, float] | None
    n: int
    exact: bool = False  # analytic: counted or computed, the same on every run of the same work
    estimated: bool = False
    invalid: str | None = None

    @property
    def few_repeats(self) -> bool:
        """No interval to judge it by: too few samples for the median's (or one sample)."""
        return self.interval is None


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def make_figure(value: float, *, source: str, n: int, median: float | None = None,
                median_low: float | None = None, median_high: float | None = None, mean: float | None = None,
                mean_low: float | None = None, mean_high: float | None = None, invalid: str | None = None,
                stat: str = "value") -> Figure:
    """The figure shown for a stored metric: its value with the median's interval, or
    (stat="mean") its mean with the mean's. Analytic figures are exact (a point); a value
    that is not the median of its samples (a total, the last of a curve) has no interval."""
    source = getattr(source, "value", source)
    invalid = invalid if isinstance(invalid, str) and invalid else None
    exact, estimated = source == "analytic", source == "estimated"
    if stat == "mean":
        value = float(mean)
        interval = (float(mean_low), float(mean_high)) if n >= 2 and _finite(mean_low) and _finite(mean_high) \
            else None
    else:
        value = float(value)
        interval = (float(median_low), float(median_high)) \
            if _finite(median_low) and _finite(median_high) and _finite(median) \
            and math.isclose(value, median, rel_tol=1e-9, abs_tol=1e-300) else None
    if exact:
        interval = (value, value)
    return Figure(value, interval, int(n), exact, estimated, invalid)


def figure_of(m: Metric, stat: str = "value") -> Figure:
    """The figure of a record's metric."""
    s = m.summary
    return make_figure(m.value, source=m.source, n=s.n, median=s.median, median_low=s.median_ci95_low,
                       median_high=s.median_ci95_high, mean=s.mean, mean_low=s.ci95_low, mean_high=s.ci95_high,
                       invalid=m.invalid, stat=stat)


def figure_of_row(row: Any, stat: str = "value") -> Figure:
    """The figure of a store query's metric row (effbench.store.base.METRIC_COLUMNS)."""
    return make_figure(row.value, source=row.source, n=int(row.n), median=row.median,
                       median_low=row.median_ci95_low, median_high=row.median_ci95_high, mean=row.mean,
                       mean_low=row.ci95_low, mean_high=row.ci95_high, invalid=row.invalid, stat=stat)


# ------------------------------------------------------------------ practical significance


def threshold(name: str) -> float:
    """The metric's practical-significance threshold, relative (catalogue; lm-eval scores: 1%)."""
    spec = CATALOG.get(name)
    return spec.practical if spec is not None else PRACTICAL_DEFAULT


def beyond_threshold(a: float, b: float, rel: float) -> bool:
    """Whether a and b differ by more than `rel` × the smaller magnitude (e.g. 5% faster)."""
    return a != b and abs(a - b) > rel * min(abs(a), abs(b))


def _inside(x: float, interval: tuple[float, float]) -> bool:
    return interval[0] <= x <= interval[1]


def real_difference(a: Figure, b: Figure, rel: float) -> bool | None:
    """True: each figure lies outside the other's interval and they differ by more than
    `rel`; False: a tie (within the threshold, or inside an interval); None: beyond the
    threshold, but one figure has no interval to tell noise from a difference."""
    if not beyond_threshold(a.value, b.value, rel):
        return False
    if a.interval is None or b.interval is None:
        return None
    return not _inside(b.value, a.interval) and not _inside(a.value, b.interval)


class Verdict(str, enum.Enum):
    """How a figure compares with the baseline's."""

    BETTER = "better"
    WORSE = "worse"
    DIFFERS = "differs"  # a real difference, on a metric without a direction
    TIE = "tie"
    UNDECIDED = "undecided"  # beyond the threshold, but too few repeats to tell
    INVALID = "invalid"
    NOT_COMPARABLE = "not comparable"

    @property
    def mark(self) -> str:
        return MARKS[self]


MARKS = {Verdict.BETTER: "✓", Verdict.WORSE: "✗", Verdict.DIFFERS: "≠", Verdict.TIE: "~",
         Verdict.UNDECIDED: "?", Verdict.INVALID: "⚠", Verdict.NOT_COMPARABLE: "≁"}
MEANINGS = {
    Verdict.BETTER: "better by the metric's direction: outside both intervals and beyond its threshold",
    Verdict.WORSE: "worse, by the same test",
    Verdict.DIFFERS: "a real difference on a metric without a direction",
    Verdict.TIE: "a tie: within the metric's practical threshold, or inside an interval",
    Verdict.UNDECIDED: f"beyond the threshold, but {FEW_REPEATS}",
    Verdict.INVALID: "an invalid figure (outside its physical domain): never judged",
    Verdict.NOT_COMPARABLE: "not comparable: another scenario or workload, other hardware for a measured "
                            "figure, or an estimate against a measurement",
}


def judge(base: Figure, other: Figure, rel: float, higher_is_better: bool | None,
          same_hardware: bool = True) -> Verdict:
    """The verdict on `other` against `base` (both of the same metric and workload)."""
    if base.invalid or other.invalid:
        return Verdict.INVALID
    if base.estimated != other.estimated or (not same_hardware and not (base.exact and other.exact)):
        return Verdict.NOT_COMPARABLE
    real = real_difference(base, other, rel)
    if real is None:
        return Verdict.UNDECIDED
    if not real:
        return Verdict.TIE
    if higher_is_better is None:
        return Verdict.DIFFERS
    return Verdict.BETTER if (other.value > base.value) == higher_is_better else Verdict.WORSE


def change_text(base: float, value: float, unit: str) -> str:
    """`−12.3 ms · ×0.51`: difference and ratio against the baseline."""
    from effbench.report import fmt

    ratio = f" · ×{value / base:.3g}" if base else ""
    return ("+" if value >= base else "−") + fmt(abs(value - base), unit) + ratio


# --------------------------------------------------------------------------- sanity flags

DOCS = "docs/metrics.md"
SECTIONS = {"memory": "memory", "compute": "compute", "latency": "latency", "throughput": "throughput",
            "energy": "energy", "compression": "compression", "quality": "quality", "model": "model-facts"}


def metric_doc(name: str) -> str:
    """Where docs/metrics.md explains the metric (its family's section)."""
    if name.startswith(("serve.", "server.")):
        return f"{DOCS}#serving"
    spec = CATALOG.get(name)
    return f"{DOCS}#{SECTIONS.get(spec.family, 'quality') if spec else 'quality'}"


@dataclass(frozen=True)
class Flag:
    code: str  # invalid | estimated | flops-low | runtime-memory
    mark: str
    text: str
    doc: str  # the docs/metrics.md section that explains it


FLOPS_FAR_BELOW = 0.5  # compute.flops < this × compute.flops_analytic: the counter missed work


@dataclass(frozen=True)
class FlagKind:
    mark: str
    meaning: str  # one line, for legends under tables
    doc: str


FLAG_KINDS = {
    "invalid": FlagKind("⚠", "invalid: outside the metric's physical domain, a defect — never ranked",
                        f"{DOCS}#impossible-figures"),
    "estimated": FlagKind("≈", "estimated: a model (e.g. CPU energy without counters), not a measurement — "
                               "ranked apart", f"{DOCS}#source-labels"),
    "flops-low": FlagKind("▽", f"counted FLOPs below {FLOPS_FAR_BELOW:.0%} of the analytic count: FLOP-based "
                               "figures read low", f"{DOCS}#compute"),
    "runtime-memory": FlagKind("◔", f"runtime-dominated memory: over {RUNTIME_DOMINATED_SHARE:.0%} of the "
                                    "process's peak is the runtime, not the model", f"{DOCS}#memory"),
}
FLOPS_DERIVED = ("compute.flops", "compute.achieved_flops_per_s", "compute.mfu", "compute.mfu_achievable")
RSS_DERIVED = ("memory.peak_bytes", "memory.avg_bytes", "memory.amu")


class MetricLike(Protocol):
    value: float
    source: Any  # Source or its string
    invalid: str | None


def _flag(code: str, text: str) -> Flag:
    kind = FLAG_KINDS[code]
    return Flag(code, kind.mark, text, kind.doc)


def flags(metrics: Mapping[str, MetricLike]) -> dict[str, list[Flag]]:
    """The sanity flags of one run's figures, by metric name (metrics without one are absent)."""
    out: dict[str, list[Flag]] = defaultdict(list)
    for name, m in metrics.items():
        if isinstance(m.invalid, str) and m.invalid:
            out[name].append(_flag("invalid", f"invalid: {m.invalid}"))
        if getattr(m.source, "value", m.source) == "estimated":
            out[name].append(_flag("estimated", FLAG_KINDS["estimated"].meaning))
    counted, analytic = metrics.get("compute.flops"), metrics.get("compute.flops_analytic")
    if counted is not None and analytic is not None and analytic.value > 0 \
            and counted.value < FLOPS_FAR_BELOW * analytic.value:
        text = (f"counted FLOPs are {counted.value / analytic.value:.0%} of the analytic count: the counter missed "
                "work (e.g. quantized layers it does not see), so FLOP-based figures read low")
        for name in FLOPS_DERIVED:
            if name in metrics:
                out[name].append(_flag("flops-low", text))
    share = metrics.get("memory.runtime_share")
    if share is not None and share.value > RUNTIME_DOMINATED_SHARE:
        text = (f"runtime-dominated: {share.value:.0%} of the peak is the runtime (interpreter, libraries, "
                "allocator), not the model; memory.model_resident_bytes tells techniques apart")
        for name in RSS_DERIVED:
            if name in metrics:
                out[name].append(_flag("runtime-memory", text))
    return dict(out)


def marks(found: Iterable[Flag]) -> str:
    return "".join(dict.fromkeys(f.mark for f in found))


# --------------------------------------------------------------------------- comparisons


def in_catalogue_order(names: Iterable[str]) -> list[str]:
    order = {n: i for i, n in enumerate(CATALOG)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def higher_is_better(name: str, stored: Iterable = ()) -> bool | None:
    """Direction from the catalogue; metrics it lacks (lm-eval tasks) keep the one stored with them."""
    if name in CATALOG:
        return CATALOG[name].higher_is_better
    return next((bool(s) for s in stored if s is not None and not (isinstance(s, float) and math.isnan(s))), None)


def label_workloads(items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """`inference (batch_size=8)` for each (scenario, flat workload): the scenario and the
    workload keys that vary among the items of that scenario (nothing when they agree)."""
    swept = {s: differing(w for s2, w in items if s2 == s) for s in {s for s, _ in items}}
    return [s + (f" ({describe(w, mine)})" if (mine := [k for k in swept[s] if k in w]) else "") for s, w in items]


def scenario_labels(records: Sequence[RunRecord]) -> list[str]:
    """Each run's scenario and the workload keys that vary among these runs of its scenario."""
    return label_workloads([(r.scenario, workload(r.config)) for r in records])


def run_labels(records: Sequence[RunRecord]) -> list[str]:
    """`tiny-llama × bf16 · inference (batch_size=8) · 3f2a9c01`: model, technique, scenario
    and swept workload keys, id."""
    return [f"{r.model} × {r.technique} · {s} · {r.id[:8]}" for r, s in zip(records, scenario_labels(records))]


@dataclass(frozen=True)
class Judged:
    """One run's figure of one metric in a comparison."""

    figure: Figure | None  # None: the run has no such metric
    unit: str = ""
    verdict: Verdict | None = None  # None: the baseline, or nothing to judge
    change: str = ""  # against the baseline
    flags: tuple[Flag, ...] = ()


@dataclass
class Comparison:
    """Runs side by side, the first the baseline: per metric, each run's figure and verdict."""

    labels: list[str]
    rows: dict[str, list[Judged]]  # metric name → one per run
    comparable: list[bool]  # per run: same scenario and workload as the baseline (the baseline: True)
    notes: list[str] = field(default_factory=list)  # runs that cannot be judged against the baseline, and why


def compare_runs(records: Sequence[RunRecord]) -> Comparison:
    """Judge every run against the first, metric by metric, by the shared rules: runs of
    another scenario or workload are shown but not judged."""
    keys = [RunKey.of(r) for r in records]
    labels = run_labels(records)
    by_run = [{m.name: m for m in r.metrics} for r in records]
    run_flags = [flags(d) for d in by_run]
    reasons = [None] + [not_comparable(keys[0], k) for k in keys[1:]]
    notes = [f"{label}: not judged against the baseline — {why}" for label, why in zip(labels, reasons) if why]
    for label, k in zip(labels[1:], keys[1:]):
        if k.hardware != keys[0].hardware:
            notes.append(f"{label}: other hardware ({k.hardware}): only exact (analytic) figures are judged")
    rows: dict[str, list[Judged]] = {}
    for name in in_catalogue_order({n for d in by_run for n in d}):
        base_m = by_run[0].get(name)
        base = figure_of(base_m) if base_m else None
        direction = higher_is_better(name, [base_m.higher_is_better] if base_m else [])
        row = []
        for k, (d, found, key, why) in enumerate(zip(by_run, run_flags, keys, reasons)):
            m = d.get(name)
            if m is None:
                row.append(Judged(None))
                continue
            fig = figure_of(m)
            verdict, change = None, ""
            if k > 0 and base is not None:
                verdict = Verdict.NOT_COMPARABLE if why else judge(
                    base, fig, threshold(name), direction, key.hardware == keys[0].hardware)
                change = "" if why else change_text(base.value, fig.value, m.unit)
            row.append(Judged(fig, m.unit, verdict, change, tuple(found.get(name, ()))))
        rows[name] = row
    return Comparison(labels, rows, [why is None for why in reasons], notes)
