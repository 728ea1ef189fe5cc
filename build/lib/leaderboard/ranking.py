"""The leaderboard's rules (SPEC §3), as pure functions on pandas frames.

Peer groups, the paper's columns per axis, ranks with ties by 95%-interval
overlap, min–max scores, the composite and the Pareto front. No database and
no Streamlit here: docs/leaderboard.md states the same rules in words.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from effbench.metrics.catalog import CATALOG

# Upper bounds (parameters, exclusive) of the model-size buckets. The paper's
# 0.5B, 1.5B and 3B models (and SPEC's 3.8B example) each land in their own.
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
    stat: str = "value"  # the summary figure ranked: "mean" for AL (SPEC: the mean latency)
    paper: bool = True  # a column of the paper's tables: shown even when empty, weight 1 by default


PERFORMANCE = "Performance"
CELL_COLUMNS = ["entry", "column", "metric", "value", "low", "high", "unit", "source", "estimated", "higher_is_better",
                "rank", "pool", "tier"]
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
              Column("Goodput", ("serve.goodput_requests_per_s",)), _AEC),
}
EXTRAS = tuple(
    Column(title, (name,), paper=False)
    for title, name in (("Peak mem", "memory.peak_bytes"), ("MFU", "compute.mfu"), ("TTFT", "latency.ttft_s"),
                        ("TPOT", "latency.tpot_s"), ("J/token", "energy.joules_per_token"))
)
# Every metric a rank table may show (plus lm-eval accuracies, matched by ACCURACY_LIKE).
RANKED_METRICS = sorted({n for cols in (*AXIS_COLUMNS.values(), *SCENARIO_COLUMNS.values(), EXTRAS) for c in cols
                         for n in c.candidates})


def size_bucket(parameters: float | None) -> str:
    if parameters is None or not math.isfinite(parameters):
        return UNKNOWN_SIZE
    return next(label for upper, label in SIZE_BUCKETS if parameters < upper)


def columns_for(axis: str, scenario: str | None = None) -> tuple[Column, ...]:
    return (SCENARIO_COLUMNS.get(scenario) or AXIS_COLUMNS.get(axis, _OTHER_AXIS)) + EXTRAS


def higher_is_better(name: str, stored: Iterable = ()) -> bool | None:
    """Direction from the catalogue; metrics it lacks (lm-eval tasks) keep the one stored with them."""
    if name in CATALOG:
        return CATALOG[name].higher_is_better
    return next((bool(s) for s in stored if s is not None and s == s), None)


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


def _flatten(d: Mapping, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def workload_labels(workloads: pd.Series) -> dict[str, str]:
    """Short label per workload (JSON of the run's scenario and data config): the
    settings that differ from the other workloads of the same scenario, or ""."""
    flat = {w: _flatten(json.loads(w)) for w in workloads.unique()}
    labels = {}
    for w, settings in flat.items():
        others = [o for o, s in flat.items() if o != w and s.get("scenario.name") == settings.get("scenario.name")]
        differing = sorted({k for o in others for k in settings.keys() | flat[o].keys()
                            if settings.get(k) != flat[o].get(k)})
        labels[w] = ", ".join(f"{k.removeprefix('scenario.')}={settings.get(k, '–')}" for k in differing)
    return labels


def peer_groups(runs: pd.DataFrame) -> pd.DataFrame:
    """Adds `bucket` and `group` to runs (columns axis, scenario, workload, hardware,
    parameters). A peer group is axis × workload × model-size bucket × hardware:
    SPEC's axis × size × hardware, split by scenario and its settings, since a
    pretraining run and an inference run (or batch 1 and batch 8) measure different things."""
    runs = runs.copy()
    runs["bucket"] = [size_bucket(p) for p in runs["parameters"]]
    labels = workload_labels(runs["workload"]) if len(runs) else {}
    scenario = runs["scenario"] + runs["workload"].map(lambda w: f" ({labels[w]})" if labels[w] else "")
    hardware = runs["hardware"].fillna("unknown hardware")
    runs["group"] = runs["axis"] + " · " + scenario + " · " + runs["bucket"] + " · " + hardware
    return runs


def group_order(groups: pd.DataFrame) -> list[str]:
    """Group labels of `peer_groups` output: by axis, scenario, size bucket, hardware."""
    keys = groups.drop_duplicates("group").assign(b=lambda g: g["bucket"].map(BUCKET_ORDER.index))
    return keys.sort_values(["axis", "scenario", "b", "hardware", "group"])["group"].tolist()


# ---------------------------------------------------------------------- ranks


def interval_ranks(values, lows, highs, higher_is_better: bool) -> np.ndarray:
    """Competition ranks, 1 = best. Going from best to worst value, an entry whose
    interval overlaps that of the current tie group's first (best) entry shares its
    rank; otherwise it starts a new tie group ranked by its position. Every member of
    a tie group thus overlaps its leader, and ranks never improve as values worsen."""
    values, lows, highs = (np.asarray(a, dtype=float) for a in (values, lows, highs))
    order = np.argsort(-values if higher_is_better else values, kind="stable")
    ranks = np.zeros(len(values), dtype=int)
    leader = None
    for position, i in enumerate(order, start=1):
        if leader is not None and lows[i] <= highs[leader] and lows[leader] <= highs[i]:
            ranks[i] = ranks[leader]
        else:
            leader, ranks[i] = i, position
    return ranks


def tier(rank: int, pool: int) -> int:
    """1, 2 or 3: the top, middle or bottom third of the ranked pool."""
    return 1 + (3 * (rank - 1)) // pool


def rank_cells(metrics: pd.DataFrame, axis: str, scenario: str | None = None) -> pd.DataFrame:
    """The rank table of one peer group, long: one row per entry × column.

    `metrics` has one row per entry × metric (columns entry, name, value, mean,
    ci95_low, ci95_high, unit, source, higher_is_better). Figures with source
    `estimated` are ranked in a pool of their own, apart from measured ones.
    Paper columns are kept when empty (metric None); extras only when present.
    """
    counts = metrics["name"].value_counts().to_dict()
    frames = []
    for column in columns_for(axis, scenario):
        name = resolve(column, counts)
        if name is None:
            if column.paper:
                frames.append(pd.DataFrame({"column": [column.title], "metric": [None]}))
            continue
        rows = metrics[metrics["name"] == name]
        value = rows[column.stat].astype(float)
        cells = pd.DataFrame({
            "entry": rows["entry"], "column": column.title, "metric": name, "value": value,
            "low": np.fmin(rows["ci95_low"], value), "high": np.fmax(rows["ci95_high"], value),
            "unit": rows["unit"], "source": rows["source"], "estimated": rows["source"] == ESTIMATED,
            "higher_is_better": higher_is_better(name, rows["higher_is_better"]),
            "rank": np.nan, "pool": np.nan, "tier": np.nan,
        })  # fmt: skip
        direction = cells["higher_is_better"].iloc[0]
        if direction is not None:
            for _, pool in cells.groupby("estimated"):
                ranks = interval_ranks(pool["value"], pool["low"], pool["high"], direction)
                cells.loc[pool.index, "rank"] = ranks
                cells.loc[pool.index, "pool"] = len(pool)
                cells.loc[pool.index, "tier"] = [tier(r, len(pool)) for r in ranks]
        frames.append(cells)
    return pd.concat(frames, ignore_index=True).reindex(columns=CELL_COLUMNS)


# ------------------------------------------------------------------- scores


def scores(cells: pd.DataFrame, include_estimated: bool = False) -> pd.Series:
    """Min–max normalised score per cell, 1 = best of the group, 0 = worst, oriented by
    direction. Normalised over measured cells only, unless estimated ones are included;
    excluded cells and metrics without a direction are NaN. All-equal values score 1."""
    out = pd.Series(np.nan, index=cells.index)
    usable = cells["higher_is_better"].notna() & cells["value"].notna()
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
    (each lifted to FLOOR + (1 − FLOOR)·score), over the columns with weight > 0 it has.
    Columns: score, used (how many columns went in), rank (ties: equal scores)."""
    s = scores(cells, include_estimated)
    w = cells["column"].map(weights).fillna(0.0)
    keep = s.notna() & (w > 0)
    parts = pd.DataFrame({"entry": cells["entry"][keep], "w": w[keep], "s": FLOOR + (1 - FLOOR) * s[keep]})
    by = parts.assign(inv=parts["w"] / parts["s"]).groupby("entry")
    out = pd.DataFrame({"score": by["w"].sum() / by["inv"].sum(), "used": by.size()})
    out["rank"] = interval_ranks(out["score"], out["score"], out["score"], True) if len(out) else []
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


def verdict(base: tuple[float, float, float], other: tuple[float, float, float], higher_is_better: bool | None) -> str:
    """How `other` (value, ci95_low, ci95_high) compares with `base`: "same" value, "within noise"
    when the 95% intervals (each widened to hold its value) overlap, else "better" or "worse" by
    the metric's direction ("differs" without one)."""
    (v0, lo0, hi0), (v1, lo1, hi1) = base, other
    if v1 == v0:
        return "same"
    if min(lo1, v1) <= max(hi0, v0) and min(lo0, v0) <= max(hi1, v1):
        return "within noise"
    if higher_is_better is None:
        return "differs"
    return "better" if (v1 > v0) == higher_is_better else "worse"
