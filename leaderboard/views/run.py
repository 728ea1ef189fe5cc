"""Run detail: everything stored for one run."""

import pandas as pd
import streamlit as st

from effbench import compare
from effbench.metrics.catalog import CATALOG
from effbench.metrics.record import Source, Status
from effbench.report import fmt
from leaderboard import plots, ui
from leaderboard.queries import Filters

snap = ui.require_store()
st.title("Run detail")

recent = ui.run_page(snap, Filters(), None, True, 0, 200)
labels = {i: f"{ui.run_label(m, t, i)} · {s} · {c[:16].replace('T', ' ')}"
          for i, m, t, s, c in recent[["id", "model", "technique", "status", "created_at"]].itertuples(False)}
link = st.query_params.get("id", "")
if "run_id" not in st.session_state or link != st.session_state.get("run_link"):  # a link names the run
    st.session_state["run_id"] = link


def _picked() -> None:
    st.session_state["run_id"] = st.session_state["run_pick"] or ""


left, right = st.columns([2, 1])
left.selectbox("Run (newest 200)", list(labels), format_func=labels.get, index=None, key="run_pick",
               on_change=_picked, placeholder="choose a run, or type its id on the right")
typed = right.text_input("Run id or unique prefix", key="run_id").strip()
try:
    r = ui.record(snap, typed or next(iter(labels)))
except KeyError as e:
    st.error(e.args[0])
    st.stop()
st.query_params["id"] = st.session_state["run_link"] = r.id

badge = {Status.OK: ":green-badge[ok]", Status.FAILED: ":red-badge[failed]", Status.SKIPPED: ":orange-badge[skipped]"}
st.subheader(f"{r.model} × {r.technique} {badge[r.status]}")
facts = {
    "run id": r.id, "created (UTC)": r.created_at, "axis / scenario": f"{r.axis} / {r.scenario}",
    "workload": compare.describe(compare.workload(r.config), compare.workload(r.config)) or "–",
    "engine": compare.engine(r.config), "hardware": r.hardware.get("label", "–"), "seed": r.seed,
    "config hash": r.config_hash,
    "sweep": r.sweep_id or "–", "duration": f"{r.duration_s:.1f} s" if r.duration_s else "–",
    "tags": ", ".join(r.tags) or "–", "artifact": (r.artifact or {}).get("path", "–"),
}  # fmt: skip
columns = st.columns(2)
for i, (key, value) in enumerate(facts.items()):
    columns[i % 2].markdown(f"**{key}**: `{value}`")

if r.error:
    st.error(f"**This run {r.status.value}:** {r.error.splitlines()[0]}")
    st.code(r.error, language=None)

if r.metrics:
    st.markdown(f"#### {len(r.metrics)} metrics")
    found = compare.flags({m.name: m for m in r.metrics})
    rows = []
    for m in sorted(r.metrics, key=lambda m: compare.in_catalogue_order([x.name for x in r.metrics]).index(m.name)):
        s, fig = m.summary, compare.figure_of(m)
        median_ci = ("exact (analytic)" if fig.exact else compare.FEW_REPEATS if s.median_ci95_low is None
                     else f"{fmt(s.median_ci95_low, m.unit)} – {fmt(s.median_ci95_high, m.unit)}")
        rows.append({
            "metric": m.name, "name": CATALOG[m.name].display if m.name in CATALOG else "",
            "value": ui.value_text(m.value, m.unit, m.source.value), "flags": compare.marks(found.get(m.name, [])),
            "source": ("≈ " if m.source is Source.ESTIMATED else "") + m.source.value, "n": s.n,
            "95% CI of median": median_ci, "mean": fmt(s.mean, m.unit),
            "95% CI of mean": f"{fmt(s.ci95_low, m.unit)} – {fmt(s.ci95_high, m.unit)}" if s.n > 1 else "–",
            "p90": fmt(s.p90, m.unit), "p99": fmt(s.p99, m.unit),
            "samples": m.samples, "how": m.note or (CATALOG[m.name].description if m.name in CATALOG else ""),
        })  # fmt: skip
    st.dataframe(pd.DataFrame(rows), hide_index=True, height=38 + 35 * len(rows), column_config={
        "samples": st.column_config.LineChartColumn("samples (in order)", width="medium"),
    })  # fmt: skip
    st.caption(ui.ESTIMATED_NOTE + ". Sources: counter = hardware energy counter, sampled = polling thread, "
               "timer = clocks, analytic = counted or computed. The value is the median of the samples unless the "
               "metric says otherwise; its 95% interval needs 6 samples.")
    notes = sorted({(f.mark, f.text, f.doc) for fl in found.values() for f in fl if f.code != "estimated"})
    if notes:
        st.html("<br>".join(f"{mark} {ui.doc_link(doc, text)}" for mark, text, doc in notes))
    several = [m.name for m in r.metrics if len(m.samples) > 1]
    if several:
        name = st.selectbox("Samples of", several, format_func=ui.title)
        m = r.metric(name)
        frame = pd.DataFrame({"sample": range(1, len(m.samples) + 1), m.unit or "value": m.samples})
        st.bar_chart(frame, x="sample", y=m.unit or "value", height=220)
    if any(m.name == "quality.train_loss" for m in r.metrics):
        ui.show_plot(plots.loss_curves([r]), f"effbench-loss-{r.id[:8]}")

for heading, data in (("Resolved config", r.config), ("Hardware", r.hardware), ("Software", r.software)):
    with st.expander(heading, expanded=heading == "Resolved config"):
        st.json(data)
if r.artifact:
    with st.expander("Artifact"):
        st.json(r.artifact)
