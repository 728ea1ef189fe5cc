"""Compare: two or more runs side by side, deltas and ratios against a baseline, noise-aware."""

import pandas as pd
import streamlit as st

from effbench.metrics.catalog import CATALOG
from effbench.report import fmt
from leaderboard import ranking, ui
from leaderboard.queries import Filters

VERDICT_COLOURS = {"better": "background-color:#b7e4c7", "worse": "background-color:#f9c9c9",
                   "within noise": "color:#777", "same": "color:#777", "differs": "background-color:#fff1b8"}
VERDICT_MARKS = {"better": "✓", "worse": "✗", "within noise": "~", "same": "=", "differs": "≠"}

snap = ui.require_store()
st.title("Compare runs")

recent = ui.run_page(snap, Filters(status=("ok",)), None, True, 0, 200)
labels = {i: ui.run_label(m, t, i) for i, m, t in recent[["id", "model", "technique"]].itertuples(False)}
links = st.query_params.get_all("runs")
if "compare_ids" not in st.session_state or links != st.session_state.get("compare_links"):
    st.session_state["compare_ids"] = links  # a link (ids or unique prefixes) names the runs
chosen = {}
for run_id in st.session_state["compare_ids"]:
    try:
        r = ui.record(snap, run_id)
    except KeyError as e:
        st.warning(e.args[0])
        continue
    chosen[r.id] = r
    labels.setdefault(r.id, ui.run_label(r.model, r.technique, r.id))
st.session_state["compare_ids"] = list(chosen)
ids = st.multiselect("Runs (the first is the baseline)", list(labels), format_func=labels.get, key="compare_ids",
                     placeholder="choose two or more runs (newest 200 successful runs, or select them in the Explorer)")
st.query_params["runs"] = st.session_state["compare_links"] = ids
if len(ids) < 2:
    st.info("Choose at least two runs to compare.")
    st.stop()

runs = [chosen.get(i) or ui.record(snap, i) for i in ids]
by_run = [{m.name: m for m in r.metrics} for r in runs]
order = list(CATALOG)
names = sorted({n for d in by_run for n in d}, key=lambda n: (order.index(n) if n in order else len(order), n))
heads = [ui.run_label(r.model, r.technique, r.id) for r in runs]
rows, verdicts = [], []
for name in names:
    row, marks = {"metric": ui.title(name)}, {}
    b = by_run[0].get(name)
    direction = ranking.higher_is_better(name, [b.higher_is_better] if b else [])
    for k, (head, by) in enumerate(zip(heads, by_run)):
        m = by.get(name)
        row[head] = ui.value_text(m.value, m.unit, m.source.value) if m else "–"
        if k == 0:
            continue
        if m is None or b is None:
            row[f"vs baseline: {head}"] = "–"
            continue
        verdict = ranking.verdict((b.value, b.summary.ci95_low, b.summary.ci95_high),
                                  (m.value, m.summary.ci95_low, m.summary.ci95_high), direction)
        ratio = f" · ×{m.value / b.value:.3g}" if b.value else ""
        delta = ("+" if m.value >= b.value else "−") + fmt(abs(m.value - b.value), m.unit)
        row[f"vs baseline: {head}"] = f"{VERDICT_MARKS[verdict]} {delta}{ratio}"
        marks[f"vs baseline: {head}"] = verdict
    rows.append(row)
    verdicts.append(marks)
table = pd.DataFrame(rows)
styles = pd.DataFrame(verdicts, index=table.index, columns=table.columns).map(
    lambda v: VERDICT_COLOURS.get(v, "") if isinstance(v, str) else "")
st.dataframe(table.style.apply(lambda _: styles, axis=None), hide_index=True, height=38 + 35 * len(table))
st.caption(f"Baseline: {heads[0]}. Each 'vs baseline' cell: run − baseline · run ÷ baseline. "
           "✓ green: better, ✗ red: worse (by the metric's direction); ~ grey: within noise — the two 95% intervals "
           "of the mean (from the stored samples) overlap, so the difference is not shown to be real; "
           "≠ yellow: differs, the metric has no direction; = same value. " + ui.ESTIMATED_NOTE + ".")

plotted = [n for n in names if all(n in d for d in by_run)]
if plotted:
    name = st.selectbox("Plot", plotted, format_func=ui.title,
                        index=plotted.index("latency.e2e_s") if "latency.e2e_s" in plotted else 0)
    frame = pd.DataFrame([{"label": h, **{k: getattr(d[name].summary, k) for k in ("ci95_low", "ci95_high", "n")},
                           "value": d[name].value, "unit": d[name].unit, "source": d[name].source.value}
                          for h, d in zip(heads, by_run)])
    ui.show_plot(ui.metric_bars(frame, name), "effbench-compare")

flat = [pd.json_normalize(r.config, sep=".").iloc[0] for r in runs]
config = pd.DataFrame(flat, index=heads).T.astype(str)
differing = config[config.nunique(axis=1) > 1]
st.markdown(f"#### Config: {len(differing)} settings differ")
st.dataframe(differing, height=min(40 + 35 * len(differing), 600))
