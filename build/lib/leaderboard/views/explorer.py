"""Explorer: filter every stored run, page through them, plot them, export them."""

import math
from dataclasses import replace
from datetime import date

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from effbench.metrics.catalog import CATALOG
from effbench.metrics.record import Source
from leaderboard import ranking, ui
from leaderboard.queries import Filters

PAGE_SIZE = 100
PLOT_CAP = 5000  # newest matching runs a plot reads
BARS = 40
# Table columns: the first of the metrics a run has fills each (AL: the mean, as SPEC defines it).
HEADLINE = {
    "Perplexity": ("quality.perplexity",), "AL (s)": ("latency.e2e_s", "latency.step_s"),
    "IT / TT / ST": ("throughput.decode_tokens_per_s", "throughput.train_tokens_per_s", "throughput.samples_per_s"),
    "Peak mem (MiB)": ("memory.peak_bytes",), "AMU (%)": ("memory.amu",), "AEC (W)": ("energy.avg_power_w",),
    "J/token": ("energy.joules_per_token",), "Compression (x)": ("compression.ratio",),
}  # fmt: skip
_SCALE = {"Peak mem (MiB)": 2**-20, "AMU (%)": 100}
MEAN = {"AL (s)"}
COSTS = ("energy.joules_per_token", "energy.avg_power_w", "memory.peak_bytes", "memory.amu", "latency.e2e_s",
         "latency.step_s", "latency.tpot_s")
FILTERS = ("axis", "scenario", "model", "technique", "hardware", "status", "tag")

snap = ui.require_store()
st.title("Explorer")
facets = ui.facets(snap)

# The filters live in the URL: a link (or a fresh visit) sets them, each change is written back.
link = {key: st.query_params.get_all(key) for key in (*FILTERS, "q")}
if link != st.session_state.get("explorer_link") or any(f"f_{k}" not in st.session_state for k in FILTERS):
    for key in FILTERS:
        st.session_state[f"f_{key}"] = link[key]
    st.session_state["f_search"] = next(iter(link["q"]), "")

with st.container(border=True):
    cols = st.columns(4)
    chosen = {}
    for i, key in enumerate(FILTERS):
        options = list(dict.fromkeys([*facets[key], *st.session_state[f"f_{key}"]]))
        chosen[key] = tuple(cols[i % 4].multiselect(key, options, key=f"f_{key}", placeholder="any"))
    first, last = facets["dates"] or [date.today()] * 2
    dates = cols[3].date_input("date (UTC)", (first, last), key="f_dates")
    search = st.text_input("Search", key="f_search",
                           placeholder="part of a model or technique name, or a run id prefix")

since, until = (tuple(dates) + (None, None))[:2]
f = Filters(**chosen, since=since if since != first else None, until=until if until != last else None,
            search=search.strip())
link = {**{k: list(v) for k, v in chosen.items()}, "q": [f.search] if f.search else []}
st.query_params.from_dict({k: v for k, v in link.items() if v})
st.session_state["explorer_link"] = link

total = ui.total_runs(snap, f)
st.subheader(f"{total:,} run matches" if total == 1 else f"{total:,} runs match")

sortable = [None, *sorted({n for names in HEADLINE.values() for n in names})]
controls = st.columns([2, 1, 1])
sort = controls[0].selectbox("Sort all matching runs by", sortable,
                             format_func=lambda n: "time" if n is None else ui.title(n))
descending = controls[1].toggle("descending", value=sort is None or bool(CATALOG[sort].higher_is_better))
pages = max(1, math.ceil(total / PAGE_SIZE))
page_no = controls[2].number_input(f"page (of {pages})", 1, pages, 1)


def headline_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with their headline figures as numeric columns (so they sort) and the energy source."""
    m = ui.metric_rows(snap, tuple(runs["id"]), tuple(n for names in HEADLINE.values() for n in names))
    table = runs.assign(run="run?id=" + runs["id"], created=pd.to_datetime(runs["created_at"], format="ISO8601"),
                        error=runs["error"].fillna("").str.split("\n", n=1).str[0])
    wides = {stat: m.pivot(index="run_id", columns="name", values=stat) for stat in ("value", "mean")}
    for column, candidates in HEADLINE.items():
        wide = wides["mean" if column in MEAN else "value"]
        present = [wide[n] for n in candidates if n in wide]
        first = pd.concat(present, axis=1).bfill(axis=1).iloc[:, 0] if present else pd.Series(dtype=float)
        table[column] = first.reindex(runs["id"]).to_numpy() * _SCALE.get(column, 1)
    source = m[m["name"] == "energy.avg_power_w"].set_index("run_id")["source"].reindex(runs["id"]).to_numpy()
    table["energy source"] = pd.Series(source, index=runs.index).replace({Source.ESTIMATED.value: "≈ estimated"})
    return table.drop(columns=["created_at"])


page = ui.run_page(snap, f, sort, descending, (page_no - 1) * PAGE_SIZE, PAGE_SIZE)
table = headline_table(page)
shown = ["run", "created", "status", "axis", "scenario", "model", "technique", "hardware", "tags", *HEADLINE,
         "energy source", "error"]
selection = st.dataframe(
    table, hide_index=True, column_order=shown, on_select="rerun", selection_mode="multi-row", key="runs_table",
    column_config={
        "run": st.column_config.LinkColumn("run", display_text=r"run\?id=(.{8})", help="open the run detail"),
        "created": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm"),
        **{c: st.column_config.NumberColumn(c, format="%.4g") for c in HEADLINE},
    },
)  # fmt: skip
picked = table.iloc[selection.selection.rows]["id"].tolist()
buttons = st.columns([1, 1, 2])
if buttons[0].button("Open run detail", disabled=len(picked) != 1):
    st.switch_page("views/run.py", query_params={"id": picked[0]})
if buttons[1].button(f"Compare selected ({len(picked)})", disabled=len(picked) < 2):
    st.switch_page("views/compare.py", query_params={"runs": picked})


def all_matching_csv() -> str:
    return headline_table(ui.run_page(snap, f, sort, descending, 0, None))[[*shown[1:], "id"]].to_csv(index=False)


buttons[2].download_button(f"Download all {total:,} matching runs (CSV)", all_matching_csv,
                           file_name="effbench-runs.csv", mime="text/csv")
st.caption("Select rows (left edge) to open or compare runs. Column headers sort this page; "
           "'Sort all matching runs by' sorts across pages. " + ui.ESTIMATED_NOTE + ".")

st.subheader("Plots")
st.caption(f"From the newest {PLOT_CAP:,} successful runs that match the filters. The camera button of a plot "
           "downloads it (PNG or SVG: sidebar).")
scatter_tab, bars_tab, loss_tab = st.tabs(["Quality vs cost", "Metric bars", "Loss curves"])

with scatter_tab:
    c = st.columns([2, 2, 1])
    qualities = ["quality.perplexity", "quality.loss", *filter(ranking.is_accuracy, facets["metric"])]
    quality = c[0].selectbox("Quality (y)", qualities, format_func=ui.title)
    cost = c[1].selectbox("Cost (x)", COSTS, format_func=ui.title)
    log = c[2].toggle("log axes", help="Logarithmic x and y: spreads figures that span decades.")
    rows = ui.newest_metric_rows(snap, f, (quality, cost), PLOT_CAP)
    wide = rows.pivot_table(index=["id", "model", "technique", "hardware"], columns="name", values="value",
                            aggfunc="first").reset_index()
    if quality not in wide or cost not in wide or wide[[quality, cost]].dropna().empty:
        st.info(f"No matching run has both {ui.title(quality)} and {ui.title(cost)}.")
    else:
        wide = wide.dropna(subset=[quality, cost])
        estimated = wide["id"].isin(rows.loc[(rows["name"] == cost) & (rows["source"] == Source.ESTIMATED.value), "id"])
        up = {n: ranking.higher_is_better(n, rows.loc[rows["name"] == n, "higher_is_better"]) for n in (quality, cost)}
        front = ranking.pareto_front(wide[cost], wide[quality], bool(up[cost]), bool(up[quality]))
        fig = go.Figure()
        for technique, points in wide.assign(est=estimated).groupby("technique"):
            fig.add_scatter(x=points[cost], y=points[quality], mode="markers", name=technique,
                            marker_symbol=["x" if e else "circle" for e in points["est"]], marker_size=9,
                            text=[ui.run_label(m, technique, i) for m, i in zip(points["model"], points["id"])],
                            hovertemplate="%{text}<br>x %{x:.4g}<br>y %{y:.4g}<extra></extra>")
        pareto = wide[front].sort_values(cost)
        fig.add_scatter(x=pareto[cost], y=pareto[quality], mode="lines+markers", name="Pareto front",
                        line={"color": "black", "dash": "dash", "shape": "hv"}, hoverinfo="skip",
                        marker={"symbol": "circle-open", "size": 16, "color": "black"})
        fig.update_layout(title=f"{ui.title(quality)} vs {ui.title(cost)}"
                                + (" — ✕: estimated cost" if estimated.any() else ""),
                          xaxis_title=f"{ui.title(cost)} [{CATALOG[cost].unit}]", yaxis_title=ui.title(quality),
                          xaxis_type="log" if log else "linear", yaxis_type="log" if log else "linear")
        ui.show_plot(fig, "effbench-pareto")
        better = {n: "higher" if up[n] else "lower" for n in up}
        st.caption(f"Pareto front (circled): the runs no other run beats on both axes at once ({better[quality]} "
                   f"quality figure is better, {better[cost]} cost figure is better).")

with bars_tab:
    names = facets["metric"]
    name = st.selectbox("Metric", names, format_func=ui.title,
                        index=names.index("latency.e2e_s") if "latency.e2e_s" in names else 0)
    rows = ui.newest_metric_rows(snap, f, (name,), PLOT_CAP)
    # One bar per model × technique × hardware: its newest run.
    rows = rows.sort_values("created_at", ascending=False).drop_duplicates(["model", "technique", "hardware"])
    if rows.empty:
        st.info(f"No matching run has {ui.title(name)}.")
    else:
        rows = rows.head(BARS).assign(label=[ui.run_label(m, t, i) for m, t, i in
                                             rows.head(BARS)[["model", "technique", "id"]].itertuples(False)])
        ui.show_plot(ui.metric_bars(rows, name), "effbench-bars")
        st.caption(f"Newest run per model × technique × hardware (at most {BARS}); error bars: 95% confidence "
                   "interval of the mean of the stored samples (none for a single sample).")

with loss_tab:
    runs = ui.run_page(snap, replace(f, scenario=("pretrain",), status=("ok",)), None, True, 0, 8)
    if runs.empty:
        st.info("No matching successful pretraining run (scenario=pretrain) to draw.")
    else:
        ui.show_plot(ui.loss_curves([ui.record(snap, i) for i in runs["id"]]), "effbench-loss-curves")
        st.caption("The newest 8 matching pretraining runs.")
