"""The leaderboard's plots, as pure functions from frames to plotly figures: metric bars,
the trade-off scatter with its Pareto front, the roofline, the serving load curve and
pretraining loss curves. Every plot holds one view (one scenario and workload on one
hardware: effbench.compare); the pages choose which."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from effbench import compare
from effbench.metrics.catalog import CATALOG
from effbench.metrics.record import RunRecord
from effbench.report import fmt
from leaderboard import ranking

BAR_COLOUR = "#636efa"  # plotly's first colour
FLAGGED_COLOUR = "#9e9e9e"  # bars of flagged figures (invalid, runtime-dominated, FLOPs undercounted)


def title(name: str) -> str:
    """Display name with the key, e.g. "AL (latency.e2e_s)"."""
    return f"{CATALOG[name].display} ({name})" if name in CATALOG else name


def axis_title(name: str) -> str:
    unit = CATALOG[name].unit if name in CATALOG else ""
    return title(name) + (f" [{unit}]" if unit and unit != "fraction" else "")


def interval_text(low: float, high: float, n: int, unit: str) -> str:
    if np.isnan(low):
        return compare.FEW_REPEATS.replace("n<", f"n={n} <")
    return f"95% CI {fmt(low, unit)} – {fmt(high, unit)}, n = {n}"


def symbol(marks: str) -> str:
    """A point's marker: ✕ when a figure behind it is flagged (invalid, undercounted, runtime-dominated),
    ◇ when it is estimated, else ●."""
    return "x" if marks.replace("≈", "") else "diamond" if marks else "circle"


BAR_COLUMNS = ["label", "value", "low", "high", "n", "unit", "estimated", "flags", "flag_text"]


def bar_row(label: str, fig: compare.Figure, unit: str, found: Sequence[compare.Flag]) -> dict:
    """One bar of `metric_bars`: a figure with its interval and its sanity flags."""
    low, high = fig.interval or (np.nan, np.nan)
    return {"label": label, "value": fig.value, "low": low, "high": high, "n": fig.n, "unit": unit,
            "estimated": fig.estimated, "flags": compare.marks(found), "flag_text": "; ".join(f.text for f in found)}


def metric_bars(rows: pd.DataFrame, name: str) -> go.Figure:
    """One bar per run of one view, sorted by value. rows: label, value, low, high (the 95%
    interval of the figure shown; NaN: none), n, unit, estimated, flags, flag_text.
    Estimated bars are hatched; flagged ones grey with their marks in the label."""
    unit = rows["unit"].iloc[0]
    up = compare.higher_is_better(name)
    rows = rows.sort_values("value", ascending=not up if up is not None else True)
    above = (rows["high"] - rows["value"]).clip(lower=0)  # NaN (no interval): no error bar
    below = (rows["value"] - rows["low"]).clip(lower=0)
    fig = go.Figure(go.Bar(
        x=[f"{lbl} {mk}".strip() for lbl, mk in zip(rows["label"], rows["flags"])], y=rows["value"],
        error_y={"type": "data", "symmetric": False, "array": above, "arrayminus": below},
        marker_pattern_shape=["/" if e else "" for e in rows["estimated"]],
        marker_color=[FLAGGED_COLOUR if f.strip("≈") else BAR_COLOUR for f in rows["flags"]],
        hovertext=[f"{fmt(v, unit)}<br>{interval_text(lo, hi, n, unit)}" + (f"<br>{t}" if t else "")
                   for v, lo, hi, n, t in rows[["value", "low", "high", "n", "flag_text"]].itertuples(False)],
        hoverinfo="text",
    ))  # fmt: skip
    fig.update_layout(title=title(name) + (" — hatched: estimated" if rows["estimated"].any() else ""),
                      yaxis_title=unit if unit and unit != "fraction" else "fraction", xaxis_tickangle=-30)
    return fig


def tradeoff(wide: pd.DataFrame, x: str, y: str, log: bool = False) -> go.Figure:
    """Scatter of one view's runs (wide: label, technique, x, y, flags_x, flags_y) with the
    Pareto front: the runs no other beats on both axes at once, by each metric's direction."""
    up = {n: bool(compare.higher_is_better(n)) for n in (x, y)}
    front = ranking.pareto_front(wide[x], wide[y], up[x], up[y])
    fig = go.Figure()
    for technique, points in wide.groupby("technique", sort=True):
        fig.add_scatter(x=points[x], y=points[y], mode="markers", name=technique,
                        marker_symbol=[symbol(f) for f in points["flags"]], marker_size=10,
                        text=[f"{lbl} {f}".strip() for lbl, f in zip(points["label"], points["flags"])],
                        hovertemplate="%{text}<br>x %{x:.4g}<br>y %{y:.4g}<extra></extra>")
    pareto = wide[front].sort_values(x)
    fig.add_scatter(x=pareto[x], y=pareto[y], mode="lines+markers", name="Pareto front",
                    line={"color": "black", "dash": "dash", "shape": "hv"}, hoverinfo="skip",
                    marker={"symbol": "circle-open", "size": 18, "color": "black"})
    estimated = wide["flags"].str.contains("≈").any()
    fig.update_layout(title=f"{title(y)} vs {title(x)}" + (" — ◇: estimated" if estimated else ""),
                      xaxis_title=axis_title(x), yaxis_title=axis_title(y),
                      xaxis_type="log" if log else "linear", yaxis_type="log" if log else "linear")
    return fig


# -------------------------------------------------------------------------- roofline

ROOFLINE_METRICS = ("compute.flops", "compute.bytes_moved", "compute.achieved_flops_per_s",
                    "compute.peak_flops_per_s", "compute.achievable_peak_flops_per_s",
                    "compute.memory_bandwidth_bytes_per_s")


def roofline_points(wide: pd.DataFrame) -> pd.DataFrame:
    """Runs that have the roofline's figures, with intensity = compute.flops ÷
    compute.bytes_moved (FLOP/B) and achieved = compute.achieved_flops_per_s."""
    need = ["compute.flops", "compute.bytes_moved", "compute.achieved_flops_per_s"]
    if any(n not in wide for n in need):
        return wide.iloc[0:0].assign(intensity=[], achieved=[])
    points = wide.dropna(subset=need)
    return points.assign(intensity=points["compute.flops"] / points["compute.bytes_moved"],
                         achieved=points["compute.achieved_flops_per_s"])


def roofline(points: pd.DataFrame, hardware: str) -> go.Figure:
    """Each run a point at (arithmetic intensity, achieved FLOP/s), coloured by technique,
    under the device's roofs: min(peak, bandwidth × intensity) for each distinct theoretical
    peak (one per dtype), the achievable peak (timed) as a lower, dashed roof. The bandwidth
    slope is the median of the runs' probes. points: `roofline_points` + label, technique, flags."""
    fig = go.Figure()
    bandwidth = points.get("compute.memory_bandwidth_bytes_per_s", pd.Series(dtype=float)).median()
    roofs = [c for c in ("compute.peak_flops_per_s", "compute.achievable_peak_flops_per_s") if c in points]
    ridges = [p / bandwidth for c in roofs for p in points[c].dropna()] if bandwidth == bandwidth else []
    xs = np.geomspace(min(points["intensity"].min(), *ridges) / 10, max(points["intensity"].max(), *ridges) * 10, 200)
    for column, dash, what in (("compute.peak_flops_per_s", "solid", "peak"),
                               ("compute.achievable_peak_flops_per_s", "dash", "achievable")):
        if column not in roofs:
            continue
        for peak, runs in points.dropna(subset=[column]).groupby(points[column].round(-6)):
            ys = np.minimum(peak, bandwidth * xs) if bandwidth == bandwidth else np.full_like(xs, peak)
            techniques = ", ".join(sorted(runs["technique"].unique()))
            fig.add_scatter(x=xs, y=ys, mode="lines", name=f"{what} {fmt(peak, 'FLOP/s')} ({techniques})",
                            line={"color": "black" if what == "peak" else "#555", "dash": dash, "width": 1.5},
                            hoverinfo="name")
    for technique, runs in points.groupby("technique", sort=True):
        fig.add_scatter(x=runs["intensity"], y=runs["achieved"], mode="markers", name=technique,
                        marker={"size": 11, "symbol": [symbol(f) for f in runs["flags"]]},
                        text=[f"{lbl} {f}".strip() for lbl, f in zip(runs["label"], runs["flags"])],
                        hovertemplate="%{text}<br>%{x:.3g} FLOP/B<br>%{y:.4g} FLOP/s<extra></extra>")
    slope = f", bandwidth slope {fmt(bandwidth, 'B/s')} (median of the runs' probes)" if bandwidth == bandwidth else ""
    fig.update_layout(title=f"Roofline — {hardware}{slope}", xaxis_type="log", yaxis_type="log",
                      yaxis_exponentformat="SI", xaxis_exponentformat="SI",
                      xaxis_title="arithmetic intensity [FLOP/B] = compute.flops ÷ compute.bytes_moved",
                      yaxis_title="achieved [FLOP/s] (compute.achieved_flops_per_s)")
    return fig


# ------------------------------------------------------------------------ load curve

SWEEP = {"goodput": "serve.sweep_goodput_requests_per_s", "SLO attainment": "serve.sweep_slo_attainment",
         "p90 TTFT": "serve.sweep_ttft_p90_s", "error rate": "serve.sweep_error_rate"}
# A run's own load, for a sweep across runs (--multirun scenario.rate=...): its figure at its rate.
OWN = {"goodput": "serve.goodput_requests_per_s", "SLO attainment": "serve.slo_attainment",
       "p90 TTFT": "latency.ttft_s", "error rate": "serve.error_rate"}
LOAD_UNITS = {"goodput": "req/s", "SLO attainment": "fraction", "p90 TTFT": "s", "error rate": "fraction"}
LOAD_METRICS = ("serve.sweep_rates", *SWEEP.values(), *OWN.values(), "serve.knee_rate")
# Keys a load curve may vary: its x axis (the offered rate), and the engine, drawn one curve each.
CURVE_KEYS = ("scenario.rate", "scenario.rates", "backend.kind")


def curve_key(config: dict) -> str:
    """The workload of a load curve: the run's workload less the rate (its x axis) and the
    engine (one curve per engine), and less the capacity search's settings."""
    w = {k: v for k, v in compare.workload(config).items()
         if k not in CURVE_KEYS and not k.startswith("scenario.capacity.")}
    return json.dumps(w, sort_keys=True, default=str)


def load_points(runs: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The load curve's points. runs: id, model, technique, config; rows: run_id, name, value,
    samples (metric_rows with samples) for LOAD_METRICS. A run with a rate sweep gives one
    point per swept rate (its serve.sweep_* samples, in rising rate order); a Poisson run
    without one gives its own rate and figures (a sweep across runs). Columns: curve, run_id,
    rate, goodput, SLO attainment, p90 TTFT, error rate, knee (the run's knee rate or NaN)."""
    by = {(r.run_id, r.name): r for r in rows.itertuples(index=False)}
    out = []
    for run in runs.itertuples(index=False):
        curve = f"{run.technique} · {compare.engine(run.config)} · {run.model}"
        knee = by.get((run.id, "serve.knee_rate"))
        base = {"curve": curve, "run_id": run.id, "knee": knee.value if knee else np.nan}
        rates = by.get((run.id, "serve.sweep_rates"))
        if rates is not None:
            for k, rate in enumerate(rates.samples):
                point = {what: by[(run.id, name)].samples[k] if (run.id, name) in by else np.nan
                         for what, name in SWEEP.items()}
                out.append({**base, "rate": rate, **point})
            continue
        scenario = run.config.get("scenario") or {}
        if scenario.get("profile") == "poisson" and (run.id, OWN["goodput"]) in by:
            ttft = by.get((run.id, OWN["p90 TTFT"]))
            out.append({**base, "rate": float(scenario["rate"]),
                        **{what: by[(run.id, name)].value if (run.id, name) in by else np.nan
                           for what, name in OWN.items() if what != "p90 TTFT"},
                        "p90 TTFT": float(np.percentile(ttft.samples, 90)) if ttft else np.nan})
    columns = ["curve", "run_id", "rate", *SWEEP, "knee"]
    return pd.DataFrame(out, columns=columns).sort_values(["curve", "rate"]).reset_index(drop=True)


def load_curve(points: pd.DataFrame, y: str, hardware: str) -> go.Figure:
    """One line per technique × engine × model: `y` against the offered rate, the knee marked."""
    fig = go.Figure()
    unit = LOAD_UNITS[y]
    for curve, p in points.groupby("curve", sort=True):
        fig.add_scatter(x=p["rate"], y=p[y], mode="lines+markers", name=curve, legendgroup=curve,
                        hovertemplate="%{x:.3g} req/s offered<br>" + y + " %{y:.4g}<extra>" + curve + "</extra>")
        knees = p[np.isclose(p["rate"], p["knee"])]
        if len(knees):
            fig.add_scatter(x=knees["rate"], y=knees[y], mode="markers", legendgroup=curve, showlegend=False,
                            marker={"symbol": "diamond-open", "size": 16, "color": "black"},
                            hovertemplate="knee: %{x:.3g} req/s<extra>" + curve + "</extra>")
    fig.update_layout(title=f"Load curve: {y} against offered load — {hardware} (◇ knee)",
                      xaxis_title="offered Poisson rate [req/s]",
                      yaxis_title=f"{y} [{unit}]" if unit != "fraction" else y)
    return fig


# ---------------------------------------------------------------------- loss curves


def run_label(model: str, technique: str, run_id: str) -> str:
    return f"{model} × {technique} · {run_id[:8]}"


def loss_curves(records: list[RunRecord]) -> go.Figure:
    """Training loss per optimizer step (warm-up included) and held-out loss after each
    measured segment, of the runs that stored a loss curve."""
    fig = go.Figure()
    for r in records:
        by = {m.name: m.samples for m in r.metrics}
        if "quality.train_loss" not in by:
            continue
        label = run_label(r.model, r.technique, r.id)
        train, evals = by["quality.train_loss"], by.get("quality.eval_loss", [])
        fig.add_scatter(x=list(range(1, len(train) + 1)), y=train, mode="lines", name=f"{label} train",
                        legendgroup=r.id)
        scenario = r.config.get("scenario", {})
        first, every = scenario.get("warmup_steps", 0), scenario.get("eval_every", len(train) // max(len(evals), 1))
        fig.add_scatter(x=[first + every * (k + 1) for k in range(len(evals))], y=evals, mode="lines+markers",
                        name=f"{label} held-out", legendgroup=r.id, line_dash="dot")
    fig.update_layout(title="Training loss curves", xaxis_title="optimizer step", yaxis_title="loss (nat/token)")
    return fig
