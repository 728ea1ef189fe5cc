"""The leaderboard's rules (docs/spec.md §3), as pure functions on pandas frames.

Peer groups, the paper's columns per axis, ranks, min–max scores, the composite and
the Pareto front. What a workload is, when a difference is real (intervals and the
metric's practical threshold) and which figures carry a sanity flag are
effbench.compare's, shared with `effbench compare` and the gate. No database and no
Streamlit here: docs/leaderboard.md states the same rules in words.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from effbench import compare
from effbench.compare import Figure

# Upper bounds (parameters, exclusive) of the model-size buckets. The paper's
# 0.5B, 1.5B and 3B models (and docs/spec.md's 3.8B example) each land in their own.
SIZE_BUCKETS: tuple[tuple[float, str], ...] = (
    (10e6, "<10M"), (100e6, "10M–100M"), (1e9, "100M–1B"), (2e9, "1B–2B"), (5e9, "2B–5B"),
    (10e9, "5B–10B"), (30e9, "10B–30B"), (100e9, "30B–100B"), (math.inf, "≥100B"),
)  # fmt: skip
UNKNOWN_SIZE = "size unknown"
BUCKET_ORDER = [label for _, label in SIZE_BUCKETS] + [UNKNOWN_SIZE]

# A score of 0 (worst in the group) enters the composite as FLOOR: otherwise
# a pair worst at any one weighted metric would get a composite of 0.
FLOOR = 0.1
ESTIMATED = "estimated"
# lm-eval task accuracies, preferred as Performance where a group has them.
_ACCURACY = re.compile(r"quality\.[^.]+\.acc")
ACCURACY_LIKE = "quality.%.acc"


@dataclass(frozen=True)
class Column:
    """One leaderboard column: the first candidate metric most entries of a group have fills it."""

    title: str
    candidates: tuple[str, ...]
    stat: str = "value"  # the summary figure ranked: "mean" for AL (docs/spec.md: the mean latency)
    paper: bool = True  # a column of the paper's tables: shown even when empty, weight 1 by default


PERFORMANCE = "Performance"
# One row per entry × column. low/high: the 95% interval of the figure shown (NaN: none);
# flags: the marks of its sanity flags, flag_text their explanations; why: why it is not
# ranked ("" when it is).
CELL_COLUMNS = ["entry", "column", "metric", "stat", "value", "low", "high", "n", "unit", "source", "estimated",
                "exact", "invalid", "flags", "flag_text", "higher_is_better", "rank", "pool", "tier", "why"]
_AMU = Column("AMU", ("memory.amu",))
_AL = Column("AL", ("latency.e2e_s", "latency.step_s"), stat="mean")
_AEC = Column("AEC", ("energy.avg_power_w",))
_QUALITY = ("quality.perplexity", "quality.loss")
AXIS_COLUMNS: dict[str, tuple[Column, ...]] = {
    "architecture": (Column(PERFORMANCE, _QUALITY), _AMU, _AL, Column("TT", ("throughput.train_tokens_per_s",)), _AEC),
    "finetuning": (Column(PERFORMANCE, _QUALITY[::-1]), _AMU, Column("PCU", ("compute.pcu",)), _AL,
                   Column("ST", ("throughput.samples_per_s",)), _AEC),
    "inference": (Column(PERFORMANCE, _QUALITY), _AMU, _AL, Column("IT", ("throughput.decode_tokens_per_s",)), _AEC,
                  Column("MCR", ("compression.mcr",))),
}
_OTHER_AXIS = (Column(PERFORMANCE, _QUALITY), _AMU, _AL, _AEC)
# Scenarios whose runs measure other things than their axis' paper columns:
# serving (beyond the paper) ranks by its own rates.
SCENARIO_COLUMNS: dict[str, tuple[Column, ...]] = {
    "serve": (_AMU, _AL, Column("Req/s", ("serve.requests_per_s",)),
              Column("Goodput", ("serve.goodput_requests_per_s",)), _AEC,
              Column("Knee", ("serve.knee_rate",), paper=False),
              Column("Capacity", ("serve.capacity_rate", "serve.capacity_concurrency"), paper=False)),
}
# Model mem: the model's own counted bytes, which tell techniques apart where the
# process's peak (Peak mem, AMU) is mostly the runtime (a CPU run).
EXTRAS = tuple(
    Column(title, (name,), paper=False)
    for title, name in (("Peak mem", "memory.peak_bytes"), ("Model mem", "memory.model_resident_bytes"),
                        ("MFU", "compute.mfu"), ("TTFT", "latency.ttft_s"), ("TPOT", "latency.tpot_s"),
                        ("J/token", "energy.joules_per_token"))
)
# What the sanity flags are computed from (effbench.compare.flags), beside the columns.
FLAG_INPUTS = ("memory.runtime_share", "compute.flops", "compute.flops_analytic")
# Every metric a rank table reads (plus lm-eval accuracies, matched by ACCURACY_LIKE).
RANKED_METRICS = sorted({n for cols in (*AXIS_COLUMNS.values(), *SCENARIO_COLUMNS.values(), EXTRAS) for c in cols
                         for n in c.candidates} | set(FLAG_INPUTS))
# Flags that keep a figure out of the ranks: a defect, or a figure that cannot tell techniques apart.
UNRANKED_FLAGS = {"invalid": "invalid", "runtime-memory": "runtime-dominated", "flops-low": "FLOPs undercounted"}


def size_bucket(parameters: float | None) -> str:
    if parameters is None or not math.isfinite(parameters):
        return UNKNOWN_SIZE
    return next(label for upper, label in SIZE_BUCKETS if parameters < upper)


def columns_for(axis: str, scenario: str | None = None) -> tuple[Column, ...]:
    return (SCENARIO_COLUMNS.get(scenario) or AXIS_COLUMNS.get(axis, _OTHER_AXIS)) + EXTRAS


def is_accuracy(name: str) -> bool:
    return _ACCURACY.fullmatch(name) is not None


def resolve(column: Column, counts: Mapping[str, int]) -> str | None:
    """The metric filling `column` in a group: of its candidates (for Performance,
    lm-eval accuracies first), the one most entries have; earlier wins a tie."""
    candidates = column.candidates
    if column.title == PERFORMANCE:
        candidates = (*sorted(filter(is_accuracy, counts)), *candidates)
    present = [n for n in candidates if counts.get(n, 0) > 0]
    return max(present, key=lambda n: counts[n]) if present else None  # max keeps the first of equals


# ---------------------------------------------------------------- peer groups


def workload_labels(runs: pd.DataFrame) -> pd.Series:
    """`inference (batch_size=8)` per run (columns scenario, workload = effbench.compare.workload_key):
    the scenario and the workload keys that vary among the runs of that scenario here."""
    unique = runs.drop_duplicates(["scenario", "workload"])
    keys = list(zip(unique["scenario"], unique["workload"]))
    label = dict(zip(keys, compare.label_workloads([(s, json.loads(w)) for s, w in keys])))
    return pd.Series([label[k] for k in zip(runs["scenario"], runs["workload"])], index=runs.index, dtype=object)


def peer_groups(runs: pd.DataFrame) -> pd.DataFrame:
    """Adds `bucket`, `view` and `group` to runs (columns axis, scenario, workload, hardware,
    parameters). A view is one scenario and workload on one hardware: what the
    Explorer plots together. A peer group is axis × view × model-size bucket: docs/spec.md's
    axis × size × hardware, split by the workload, since a pretraining run and an
    inference run (or batch 1 and batch 8) measure different things."""
    runs = runs.copy()
    runs["bucket"] = [size_bucket(p) for p in runs["parameters"]]
    hardware = runs["hardware"].fillna("unknown hardware")
    label = workload_labels(runs) if len(runs) else pd.Series(dtype=object)
    runs["view"] = label + " · " + hardware
    runs["group"] = runs["axis"] + " · " + label + " · " + runs["bucket"] + " · " + hardware
    return runs


def group_order(groups: pd.DataFrame) -> list[str]:
    """Group labels of `peer_groups` output: by axis, scenario, size bucket, hardware."""
    keys = groups.drop_duplicates("group").assign(b=lambda g: g["bucket"].map(BUCKET_ORDER.index))
    return keys.sort_values(["axis", "scenario", "b", "hardware", "group"])["group"].tolist()


# ---------------------------------------------------------------------- ranks


def tie_ranks(figures: Sequence[Figure], higher_is_better: bool, rel: float) -> np.ndarray:
    """Competition ranks, 1 = best. Going from best to worst value, a figure that is not
    really different from the current tie group's first (best) figure — by
    effbench.compare.real_difference: outside both intervals and beyond `rel` — shares its
    rank; otherwise it starts a new tie group ranked by its position. Every member of a tie
    group thus ties with its leader, ties do not chain, and a worse value never ranks better."""
    values = np.array([f.value for f in figures], dtype=float)
    order = np.argsort(-values if higher_is_better else values, kind="stable")
    ranks = np.zeros(len(values), dtype=int)
    leader = None
    for position, i in enumerate(order, start=1):
        if leader is not None and compare.real_difference(figures[leader], figures[i], rel) is not True:
            ranks[i] = ranks[leader]
        else:
            leader, ranks[i] = i, position
    return ranks


def tier(rank: int, pool: int) -> int:
    """1, 2 or 3: the top, middle or bottom third of the ranked pool."""
    return 1 + (3 * (rank - 1)) // pool


def entry_flags(metrics: pd.DataFrame) -> dict[tuple[str, str], list[compare.Flag]]:
    """(entry, metric) → the sanity flags of that figure (effbench.compare.flags per entry)."""
    out = {}
    for entry, rows in metrics.groupby("entry", sort=False):
        by_name = {r.name: r for r in rows.itertuples(index=False)}
        for name, found in compare.flags(by_name).items():
            out[(entry, name)] = found
    return out


def rank_cells(metrics: pd.DataFrame, axis: str, scenario: str | None = None) -> pd.DataFrame:
    """The table of one peer group, long: one row per entry × column (CELL_COLUMNS).

    `metrics` has one row per entry × metric (columns entry and effbench.store.base.METRIC_COLUMNS).
    Every figure is shown; it is ranked only when it can be told apart: it has an interval
    (or is exact), carries no flag in UNRANKED_FLAGS, its metric has a direction, and at
    least one other figure of its pool can be ranked with it. Estimated figures form a pool
    of their own. Paper columns are kept when empty (metric None); extras only when present.
    """
    counts = metrics["name"].value_counts().to_dict()
    flagged = entry_flags(metrics)
    frames = []
    for column in columns_for(axis, scenario):
        name = resolve(column, counts)
        if name is None:
            if column.paper:
                frames.append(pd.DataFrame({"column": [column.title], "metric": [None]}))
            continue
        rows = metrics[metrics["name"] == name]
        figures = [compare.figure_of_row(r, column.stat) for r in rows.itertuples(index=False)]
        found = [flagged.get((e, name), []) for e in rows["entry"]]
        direction = compare.higher_is_better(name, rows["higher_is_better"])
        why = ["no direction" if direction is None else
               next((UNRANKED_FLAGS[f.code] for f in fl if f.code in UNRANKED_FLAGS), "n<6" if fig.few_repeats else "")
               for fig, fl in zip(figures, found)]
        cells = pd.DataFrame({
            "entry": rows["entry"].to_numpy(), "column": column.title, "metric": name, "stat": column.stat,
            "value": [f.value for f in figures],
            "low": [f.interval[0] if f.interval else np.nan for f in figures],
            "high": [f.interval[1] if f.interval else np.nan for f in figures],
            "n": [f.n for f in figures], "unit": rows["unit"].to_numpy(), "source": rows["source"].to_numpy(),
            "estimated": [f.estimated for f in figures], "exact": [f.exact for f in figures],
            "invalid": [f.invalid for f in figures], "flags": [compare.marks(fl) for fl in found],
            "flag_text": ["; ".join(f.text for f in fl) for fl in found], "higher_is_better": direction,
            "rank": np.nan, "pool": np.nan, "tier": np.nan, "why": why,
        })  # fmt: skip
        rankable = cells[cells["why"] == ""]
        for _, pool in rankable.groupby("estimated"):
            if len(pool) < 2:  # nothing to rank it against: a value, not a rank
                cells.loc[pool.index, "why"] = "alone"
                continue
            ranks = tie_ranks([figures[i] for i in pool.index], bool(direction), compare.threshold(name))
            cells.loc[pool.index, "rank"] = ranks
            cells.loc[pool.index, "pool"] = len(pool)
            cells.loc[pool.index, "tier"] = [tier(r, len(pool)) for r in ranks]
        frames.append(cells)
    return pd.concat(frames, ignore_index=True).reindex(columns=CELL_COLUMNS)


# ------------------------------------------------------------------- scores


def scores(cells: pd.DataFrame, include_estimated: bool = False) -> pd.Series:
    """Min–max normalised score per ranked cell, 1 = best of the group, 0 = worst, oriented
    by direction. Normalised over measured cells only, unless estimated ones are included;
    unranked cells are NaN. All-equal values score 1."""
    out = pd.Series(np.nan, index=cells.index)
    usable = cells["rank"].notna()
    if not include_estimated:
        usable &= ~cells["estimated"].fillna(False).astype(bool)
    for _, col in cells[usable].groupby("column"):
        lo, hi = col["value"].min(), col["value"].max()
        if hi == lo:
            out[col.index] = 1.0
            continue
        s = (col["value"] - lo) / (hi - lo)
        out[col.index] = s if col["higher_is_better"].iloc[0] else 1 - s
    return out


def composite(cells: pd.DataFrame, weights: Mapping[str, float], include_estimated: bool = False) -> pd.DataFrame:
    """Composite efficiency score per entry: the weighted harmonic mean of its scores
    (each lifted to FLOOR + (1 − FLOOR)·score), over the ranked columns with weight > 0 it
    has. Columns: score, used (how many columns went in), rank (ties: equal scores)."""
    s = scores(cells, include_estimated)
    w = cells["column"].map(weights).fillna(0.0)
    keep = s.notna() & (w > 0)
    parts = pd.DataFrame({"entry": cells["entry"][keep], "w": w[keep], "s": FLOOR + (1 - FLOOR) * s[keep]})
    by = parts.assign(inv=parts["w"] / parts["s"]).groupby("entry")
    out = pd.DataFrame({"score": by["w"].sum() / by["inv"].sum(), "used": by.size()})
    out["rank"] = out["score"].rank(method="min", ascending=False).astype(int) if len(out) else []
    return out


def pareto_front(x, y, x_higher_is_better: bool, y_higher_is_better: bool) -> np.ndarray:
    """Mask of the points no other point dominates (as good on both axes, better on one); NaN never on it."""
    x = np.asarray(x, dtype=float) * (1 if x_higher_is_better else -1)
    y = np.asarray(y, dtype=float) * (1 if y_higher_is_better else -1)
    front = np.zeros(len(x), dtype=bool)
    best_y, best_x = -np.inf, None
    for i in np.lexsort((-y, -x)):  # best x first, then best y
        if np.isnan(x[i]) or np.isnan(y[i]):
            continue
        if y[i] > best_y:
            front[i], best_y, best_x = True, y[i], x[i]
        elif y[i] == best_y and x[i] == best_x:  # a duplicate of a front point
            front[i] = True
    return front
