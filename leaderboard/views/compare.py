"""Compare: two or more runs side by side against the first, by effbench.compare's rules
(the same verdicts as `effbench compare`): runs of another scenario or workload are shown,
never judged."""

import pandas as pd
import streamlit as st

from effbench import compare
from effbench.compare import Verdict
from leaderboard import plots, ui
from leaderboard.queries import Filters

VERDICT_COLOURS = {Verdict.BETTER: "background-color:#b7e4c7", Verdict.WORSE: "background-color:#f9c9c9",
                   Verdict.TIE: "color:#777", Verdict.UNDECIDED: "color:#777",
                   Verdict.DIFFERS: "background-color:#fff1b8", Verdict.INVALID: "color:#b45309",
                   Verdict.NOT_COMPARABLE: "color:#aaa"}

snap = ui.require_store()
st.title("Compare runs")

recent = ui.run_page(snap, Filters(status=("ok",)), None, True, 0, 200)
labels = {i: f"{ui.run_label(m, t, i)} · {s}"
          for i, m, t, s in recent[["id", "model", "technique", "scenario"]].itertuples(False)}
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
    labels.setdefault(r.id, f"{ui.run_label(r.model, r.technique, r.id)} · {r.scenario}")
st.session_state["compare_ids"] = list(chosen)
ids = st.multiselect("Runs (the first is the baseline)", list(labels), format_func=labels.get, key="compare_ids",
                     placeholder="choose two or more runs (newest 200 successful runs, or select them in the Explorer)")
st.query_params["runs"] = st.session_state["compare_links"] = ids
if len(ids) < 2:
    st.info("Choose at least two runs to compare.")
    st.stop()

runs = [chosen.get(i) or ui.record(snap, i) for i in ids]
result = compare.compare_runs(runs)
for note in result.notes:
    st.warning(note)
heads = result.labels
rows, verdicts = [], []
for name, judged in result.rows.items():
    row, marks = {"metric": ui.title(name)}, {}
    for k, (head, j) in enumerate(zip(heads, judged)):
        if j.figure is None:
            row[head] = "–"
        else:
            few = "" if j.figure.exact or not j.figure.few_repeats else " (n<6)"
            row[head] = ui.value_text(j.figure.value, j.unit, "estimated" if j.figure.estimated else "") + few \
                + (" " + compare.marks(j.flags).replace("≈", "") if j.flags else "")
        if k == 0:
            continue
        column = f"vs baseline: {head}"
        row[column] = "–" if j.verdict is None else f"{j.verdict.mark} {j.change}".strip()
        marks[column] = j.verdict
    rows.append(row)
    verdicts.append(marks)
table = pd.DataFrame(rows)
styles = pd.DataFrame(verdicts, index=table.index, columns=table.columns).map(
    lambda v: VERDICT_COLOURS.get(v, "") if isinstance(v, Verdict) else "")
st.dataframe(table.style.apply(lambda _: styles, axis=None), hide_index=True, height=38 + 35 * len(table))
legend = " · ".join(f"{v.mark} {compare.MEANINGS[v]}" for v in Verdict)
st.caption(f"Baseline: {heads[0]}. Each 'vs baseline' cell: run − baseline · run ÷ baseline, marked {legend}. "
           "Intervals: the median's 95% interval (n<6: none, too few repeats); each metric's practical threshold "
           "is in docs/leaderboard.md. " + ui.ESTIMATED_NOTE + ".")
found = sorted({(f.code, f.mark, f.text) for judged in result.rows.values() for j in judged for f in j.flags
                if f.code != "estimated"})
if found:
    st.html("<br>".join(f"{mark} {ui.doc_link(compare.FLAG_KINDS[code].doc, text)}" for code, mark, text in found))

# The bars hold the runs judged against the baseline: one scenario and workload.
same = [k for k, ok in enumerate(result.comparable) if ok]
plotted = [n for n, judged in result.rows.items() if all(judged[k].figure is not None for k in same)]
if len(same) > 1 and plotted:
    name = st.selectbox("Plot", plotted, format_func=ui.title,
                        index=plotted.index("latency.e2e_s") if "latency.e2e_s" in plotted else 0)
    frame = pd.DataFrame([plots.bar_row(heads[k], j.figure, j.unit, j.flags)
                          for k, j in enumerate(result.rows[name]) if k in same])
    ui.show_plot(plots.metric_bars(frame, name), "effbench-compare")

flat = [pd.json_normalize(r.config, sep=".").iloc[0] for r in runs]
config = pd.DataFrame(flat, index=heads).T.astype(str)
differing = config[config.nunique(axis=1) > 1]
st.markdown(f"#### Config: {len(differing)} settings differ")
st.dataframe(differing, height=min(40 + 35 * len(differing), 600))
