"""What the pages share: the store, cached queries, labels and plots."""

from __future__ import annotations

import argparse
import sys
from typing import NamedTuple

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from sqlalchemy.engine import make_url

from effbench.metrics.catalog import CATALOG
from effbench.metrics.record import RunRecord, Source
from effbench.report import fmt
from effbench.store import Store, default_url
from leaderboard import queries
from leaderboard.queries import FIRST_SWEEP, Filters

CACHE_ENTRIES = 256  # per cached query
ESTIMATED_NOTE = "≈ estimated: a model (e.g. CPU energy without counters), not a measurement"


def store_url() -> str:
    """`streamlit run leaderboard/app.py -- --db URL`, else $EFFBENCH_DB_URL, else the default store."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db")
    return parser.parse_known_args(sys.argv[1:])[0].db or default_url()


def shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class Snapshot(NamedTuple):
    """The store as a page saw it: URL, run count, newest run's time. Cached queries are
    keyed on it (and their filters), so a new run invalidates them and none is ever stale."""

    url: str
    runs: int
    newest: str | None


@st.cache_resource(show_spinner=False)
def _store(url: str) -> Store:
    return queries.open_store(url)  # an exception is not cached: the next visit tries again


def require_store() -> Snapshot:
    """The store's snapshot; stops the page with a clear message when the store cannot be
    read or holds no runs."""
    url = store_url()
    try:
        snap = Snapshot(url, *queries.version(_store(url)))
    except queries.StoreUnavailable as e:
        st.error("**The results store cannot be opened.**")
        st.code(str(e), language=None)
        st.markdown("Point the leaderboard at another store with `effbench leaderboard --db URL` "
                    "(or `$EFFBENCH_DB_URL`).")
        st.stop()
    if snap.runs == 0:
        st.info(f"**The results store `{shown_url(url)}` holds no runs yet.** Run a first sweep, then reload:")
        st.code(FIRST_SWEEP, language="bash")
        st.stop()
    return snap


_cached = st.cache_data(max_entries=CACHE_ENTRIES, show_spinner=False)


@_cached
def total_runs(snap: Snapshot, f: Filters) -> int:
    return queries.count_runs(_store(snap.url), f)


@_cached
def facets(snap: Snapshot) -> dict[str, list]:
    return queries.facets(_store(snap.url))


@_cached
def latest_ok_runs(snap: Snapshot, f: Filters) -> pd.DataFrame:
    return queries.latest_ok_runs(_store(snap.url), f)


@_cached
def run_page(snap: Snapshot, f: Filters, sort: str | None, descending: bool, offset: int,
             limit: int | None) -> pd.DataFrame:
    return queries.run_page(_store(snap.url), f, sort, descending, offset, limit)


@_cached
def metric_rows(snap: Snapshot, run_ids: tuple[str, ...], names: tuple[str, ...] = (), like: str | None = None,
                samples: bool = False) -> pd.DataFrame:
    return queries.metric_rows(_store(snap.url), run_ids, names, like, samples)


@_cached
def newest_metric_rows(snap: Snapshot, f: Filters, names: tuple[str, ...], cap: int) -> pd.DataFrame:
    return queries.newest_metric_rows(_store(snap.url), f, names, cap)


@_cached
def record(snap: Snapshot, run_id: str) -> RunRecord:
    return _store(snap.url).get(run_id)


def title(name: str) -> str:
    """Display name with the key, e.g. "AL (latency.e2e_s)"."""
    return f"{CATALOG[name].display} ({name})" if name in CATALOG else name


def value_text(value: float, unit: str, source: str) -> str:
    return ("≈ " if source == Source.ESTIMATED.value else "") + fmt(value, unit)


def run_label(model: str, technique: str, run_id: str) -> str:
    return f"{model} × {technique} · {run_id[:8]}"


def show_plot(fig: go.Figure, name: str) -> None:
    """A plot whose modebar camera downloads it as PNG or SVG (the sidebar's choice)."""
    fig.update_layout(margin={"t": 40, "b": 40, "l": 40, "r": 20}, legend_title_text="")
    fmt_ = st.session_state.get("plot_format") or "png"
    st.plotly_chart(fig, config={"displaylogo": False,
                                 "toImageButtonOptions": {"format": fmt_, "filename": name, "scale": 2}})


def metric_bars(rows: pd.DataFrame, name: str) -> go.Figure:
    """Bars of one metric with 95%-CI error bars (from the stored samples); rows: label, value, ci95_low,
    ci95_high, unit, source. Estimated bars are hatched."""
    unit = rows["unit"].iloc[0]
    estimated = rows["source"] == Source.ESTIMATED.value
    fig = go.Figure(go.Bar(
        x=rows["label"], y=rows["value"],
        error_y={"type": "data", "symmetric": False, "array": (rows["ci95_high"] - rows["value"]).clip(lower=0),
                 "arrayminus": (rows["value"] - rows["ci95_low"]).clip(lower=0)},
        marker_pattern_shape=["/" if e else "" for e in estimated],
        hovertext=[f"{value_text(v, unit, s)}<br>95% CI {fmt(lo, unit)} – {fmt(hi, unit)}<br>n = {n}, {s}"
                   for v, lo, hi, n, s in rows[["value", "ci95_low", "ci95_high", "n", "source"]].itertuples(False)],
        hoverinfo="text",
    ))  # fmt: skip
    fig.update_layout(title=title(name) + (" — hatched: estimated" if estimated.any() else ""),
                      yaxis_title=unit or "value", xaxis_tickangle=-30)
    return fig


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
    fig.update_layout(title="Pretraining loss curves", xaxis_title="optimizer step", yaxis_title="loss (nat/token)")
    return fig


def sidebar(url: str) -> None:
    st.sidebar.caption(f"Store: `{shown_url(url)}` (read-only)")
    st.sidebar.segmented_control("Plot download (camera button)", ["png", "svg"], default="png", key="plot_format")
