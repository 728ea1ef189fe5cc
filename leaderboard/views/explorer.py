"""Explorer: filter every stored run, page through them, plot them, export them."""

import math
from datetime import date

import pandas as pd
import streamlit as st

from effbench import compare
from effbench.metrics.catalog import CATALOG
from leaderboard import plots, ranking, ui
from leaderboard.queries import Filters

PAGE_SIZE = 100
PLOT_CAP = 2000  # newest runs of a view a plot reads
# Table columns: the first of the metrics a run has fills each (AL: the mean, as docs/spec.md defines it).
HEADLINE = {
    "Perplexity": ("quality.perplexity",), "AL (s)": ("latency.e2e_s", "latency.step_s"),
    "IT / TT / ST": ("throughput.decode_tokens_per_s", "throughput.train_tokens_per_s", "throughput.samples_per_s"),
    "Peak mem (MiB)": ("memory.peak_bytes",), "AMU (%)": ("memory.amu",), "AEC (W)": ("energy.avg_power_w",),
    "J/token": ("energy.joules_per_token",), "Compression (x)": ("compression.ratio",),
}  # fmt: skip
_SCALE = {"Peak mem (MiB)": 2**-20, "AMU (%)": 100}
MEAN = {"AL (s)"}
# Defaults of the trade-off plot: the first of each a view has.
QUALITIES = ("quality.perplexity", "quality.loss", "serve.goodput_requests_per_s", "throughput.decode_tokens_per_s",
             "throughput.train_tokens_per_s", "throughput.samples_per_s")
COSTS = ("energy.joules_per_token", "energy.avg_power_w", "memory.model_resident_bytes", "memory.peak_bytes",
         "latency.e2e_s", "latency.step_s", "latency.tpot_s")
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
    """Runs with their headline figures as numeric columns (so they sort) and the marks of
    their flagged figures."""
    names = tuple(dict.fromkeys([*(n for names in HEADLINE.values() for n in names), *ranking.FLAG_INPUTS]))
    m = ui.metric_rows(snap, tuple(runs["id"]), names)
    table = runs.assign(run="run?id=" + runs["id"], created=pd.to_datetime(runs["created_at"], format="ISO8601"),
                        error=runs["error"].fillna("").str.split("\n", n=1).str[0])
    wides = {stat: m.pivot(index="run_id", columns="name", values=stat) for stat in ("value", "mean")}
    for column, candidates in HEADLINE.items():
        wide = wides["mean" if column in MEAN else "value"]
        present = [wide[n] for n in candidates if n in wide]
        first = pd.concat(present, axis=1).bfill(axis=1).iloc[:, 0] if present else pd.Series(dtype=float)
        table[column] = first.reindex(runs["id"]).to_numpy() * _SCALE.get(column, 1)
    marks = {run_id: " ".join(compare.marks(f for fl in compare.flags({r.name: r for r in rows.itertuples(
        index=False)}).values() for f in fl)) for run_id, rows in m.groupby("run_id")}
    table["flags"] = [marks.get(i, "") for i in runs["id"]]
    return table.drop(columns=["created_at"])


page = ui.run_page(snap, f, sort, descending, (page_no - 1) * PAGE_SIZE, PAGE_SIZE)
table = headline_table(page)
optional = ["axis", "hardware", "tags", *HEADLINE, "flags", "error"]
extra = st.multiselect("Columns", optional, key="table_columns",
                       default=["Perplexity", "AL (s)", "IT / TT / ST", "Peak mem (MiB)", "J/token", "flags", "error"])
shown = ["run", "created", "status", "scenario", "model", "technique", *[c for c in optional if c in extra]]
selection = st.dataframe(
    table, hide_index=True, column_order=shown, on_select="rerun", selection_mode="multi-row", key="runs_table",
    column_config={
        "run": st.column_config.LinkColumn("run", display_text=r"run\?id=(.{8})", help="open the run detail"),
        "created": st.column_config.DatetimeColumn("created (UTC)", format="MM-DD HH:mm"),
        "hardware": st.column_config.TextColumn(width="small"), "tags": st.column_config.ListColumn(width="small"),
        "flags": st.column_config.TextColumn(width="small", help="the run has figures with these sanity flags "
                                             "(its detail says which): " + "; ".join(
            f"{k.mark} {k.meaning}" for k in compare.FLAG_KINDS.values())),
        **{c: st.column_config.NumberColumn(c, format="%.4g", width="small") for c in HEADLINE},
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

# ---------------------------------------------------------------------------------- plots

st.subheader("Plots")
runs = ranking.peer_groups(ui.latest_ok_runs(snap, f))
if runs.empty:
    st.info("No successful run matches the filters: nothing to plot.")
    st.stop()
views = runs["view"].value_counts()
view = st.selectbox("View: one scenario and workload on one hardware", list(views.index), key="view",
                    format_func=lambda v: f"{v} — {views[v]} run{'s' if views[v] > 1 else ''}")
members = runs[runs["view"] == view].sort_values("created_at", ascending=False).head(PLOT_CAP)
hardware = members["hardware"].iloc[0] or "unknown hardware"
st.caption(f"The newest successful run of each model × technique × config in this view (at most {PLOT_CAP:,}); "
           "runs of another scenario or workload never share a plot. The camera button of a plot downloads it "
           "(PNG or SVG: sidebar).")
rows = ui.metric_rows(snap, tuple(members["id"])).rename(columns={"run_id": "entry"})
labels = {i: ui.run_label(m, t, i) for i, m, t in members[["id", "model", "technique"]].itertuples(False)}
flagged = ranking.entry_flags(rows)


def figures(name: str) -> pd.DataFrame:
    """One bar row (plots.bar_row) per run of the view that has `name`, indexed by run id."""
    out = {r.entry: plots.bar_row(labels[r.entry], compare.figure_of_row(r), r.unit, flagged.get((r.entry, name), []))
           for r in rows[rows["name"] == name].itertuples(index=False)}
    return pd.DataFrame.from_dict(out, orient="index", columns=plots.BAR_COLUMNS)


present = compare.in_catalogue_order(rows["name"].unique())
directed = [n for n in present if compare.higher_is_better(n) is not None]
tradeoff_tab, bars_tab, roofline_tab, load_tab, loss_tab = st.tabs(
    ["Trade-off", "Metric bars", "Roofline", "Load curve", "Loss curves"])

with tradeoff_tab:
    c = st.columns([2, 2, 1])
    y_default = next((n for n in (*QUALITIES, *directed) if n in directed), None)
    if y_default is None:
        st.info("No figure with a direction in this view.")
    else:
        y = c[0].selectbox("y", directed, index=directed.index(y_default), format_func=ui.title, key="trade_y")
        x_default = next((n for n in (*COSTS, *directed) if n in directed and n != y), y)
        x = c[1].selectbox("x", directed, index=directed.index(x_default), format_func=ui.title, key="trade_x")
        log = c[2].toggle("log axes", help="Logarithmic x and y: spreads figures that span decades.")
        fx, fy = figures(x), figures(y)
        both = fx.index.intersection(fy.index)
        if both.empty:
            st.info(f"No run of this view has both {ui.title(x)} and {ui.title(y)}.")
        else:
            wide = pd.DataFrame({x: fx.loc[both, "value"], y: fy.loc[both, "value"], "label": fx.loc[both, "label"],
                                 "technique": members.set_index("id").loc[both, "technique"],
                                 "flags": fx.loc[both, "flags"] + fy.loc[both, "flags"]})
            ui.show_plot(plots.tradeoff(wide, x, y, log), "effbench-tradeoff")
            better = {n: "higher" if compare.higher_is_better(n) else "lower" for n in (x, y)}
            st.caption(f"Pareto front (circled): the runs no other run of this view beats on both axes at once "
                       f"({better[y]} y is better, {better[x]} x is better). ✕: a flagged figure, ◇: an estimated "
                       "one (hover them).")

with bars_tab:
    name = st.selectbox("Metric", present, format_func=ui.title, key="bars_metric",
                        index=present.index("latency.e2e_s") if "latency.e2e_s" in present else 0)
    bars = figures(name)
    ui.show_plot(plots.metric_bars(bars, name), "effbench-bars")
    st.caption("One bar per run of this view, best first; error bars: the 95% interval of the median (none where "
               f"{compare.FEW_REPEATS}); grey: a flagged figure; hatched: estimated.")

with roofline_tab:
    wide = rows[rows["name"].isin(plots.ROOFLINE_METRICS)].pivot(index="entry", columns="name", values="value")
    points = plots.roofline_points(wide)
    if points.empty:
        st.info("No run of this view records compute.flops, compute.bytes_moved and achieved FLOP/s "
                "(inference runs do).")
    else:
        points = points.assign(label=[labels[i] for i in points.index],
                               technique=members.set_index("id").loc[points.index, "technique"],
                               flags=[compare.marks(flagged.get((i, "compute.flops"), [])) for i in points.index])
        ui.show_plot(plots.roofline(points, hardware), "effbench-roofline")
        st.caption("Each run at its arithmetic intensity (counted FLOPs ÷ bytes moved by the bytes model) and achieved "
                   "FLOP/s. Solid: the theoretical peak of each dtype (compute.peak_flops_per_s); dashed: the "
                   "achievable peak timed at the model's shapes; the slope: memory bandwidth. Left of a ridge a run "
                   "is memory-bound, right of it compute-bound. ✕: counted FLOPs far below the analytic count.")

with load_tab:
    serving = runs[runs["scenario"] == "serve"]
    if serving.empty:
        st.info("No successful serving run (scenario=serve) matches the filters.")
    else:
        serving = serving.assign(curve=[plots.curve_key(c) for c in serving["config"]])
        serving = serving.assign(load_view=ranking.workload_labels(serving.assign(workload=serving["curve"]))
                                 + " · " + serving["hardware"].fillna("unknown hardware"))
        choices = serving["load_view"].value_counts()
        mine = serving.loc[serving["view"] == view, "load_view"]
        c = st.columns([3, 1])
        load_view = c[0].selectbox("Serving workload (rate and engine vary along and across the curves)",
                                   list(choices.index), key="load_view",
                                   index=list(choices.index).index(mine.iloc[0]) if len(mine) else 0)
        y = c[1].selectbox("y", list(plots.SWEEP), key="load_y")
        chosen = serving[serving["load_view"] == load_view]
        samples = ui.metric_rows(snap, tuple(chosen["id"]), plots.LOAD_METRICS, None, True)
        points = plots.load_points(chosen, samples)
        if points.empty:
            st.info("These serving runs have no rate sweep (scenario.rates) and no Poisson rate of their own.")
        else:
            ui.show_plot(plots.load_curve(points, y, chosen["hardware"].iloc[0] or "unknown hardware"),
                         "effbench-load-curve")
            st.caption("One curve per technique × engine × model: a run's rate sweep (serve.sweep_*, one point per "
                       "offered rate), or across runs of a `--multirun scenario.rate=…` sweep each run's own rate "
                       "and figures. ◇: the knee (serve.knee_rate), the highest rate up to which every swept rate "
                       "meets the SLO attainment target. Engines are set side by side here, and nowhere ranked.")

with loss_tab:
    trained = members[members["scenario"].isin(["pretrain", "finetune"])].head(8)
    if trained.empty:
        st.info("No training run (scenario=pretrain or finetune) in this view.")
    else:
        ui.show_plot(plots.loss_curves([ui.record(snap, i) for i in trained["id"]]), "effbench-loss-curves")
        st.caption("The newest 8 training runs of this view.")
