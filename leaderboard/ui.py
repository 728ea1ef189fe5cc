"""What the pages share: the store, cached queries, labels and plots."""

from __future__ import annotations

import argparse
import sys
from html import escape
from typing import NamedTuple

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from sqlalchemy.engine import make_url

from effbench.metrics.record import RunRecord, Source
from effbench.report import fmt
from effbench.store import Store, default_url
from leaderboard import queries
from leaderboard.plots import run_label, title  # noqa: F401  (the pages' labels)
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
def record(snap: Snapshot, run_id: str) -> RunRecord:
    return _store(snap.url).get(run_id)


def value_text(value: float, unit: str, source: str) -> str:
    return ("≈ " if source == Source.ESTIMATED.value else "") + fmt(value, unit)


def show_plot(fig: go.Figure, name: str) -> None:
    """A plot whose modebar camera downloads it as PNG or SVG (the sidebar's choice)."""
    fig.update_layout(margin={"t": 40, "b": 40, "l": 40, "r": 20}, legend_title_text="")
    fmt_ = st.session_state.get("plot_format") or "png"
    st.plotly_chart(fig, config={"displaylogo": False,
                                 "toImageButtonOptions": {"format": fmt_, "filename": name, "scale": 2}})


def doc_link(doc: str, text: str) -> str:
    """An HTML link to a section of docs/*.md, shown by the Docs page
    (`docs/metrics.md#compute` → `docs?doc=metrics&section=compute`)."""
    path, _, section = doc.partition("#")
    name = path.removeprefix("docs/").removesuffix(".md")
    return f'<a href="docs?doc={name}&amp;section={section}" target="_self">{escape(text)}</a>'


def sidebar(url: str) -> None:
    st.sidebar.caption(f"Store: `{shown_url(url)}` (read-only)")
    st.sidebar.segmented_control("Plot download (camera button)", ["png", "svg"], default="png", key="plot_format")
