"""Overview: the rank table of one peer group, with the composite score."""

import streamlit as st

from leaderboard import ranking, ui
from leaderboard.queries import Filters
from leaderboard.table import HATCH, TIER_COLOURS, rank_table_html

snap = ui.require_store()
st.title("effbench leaderboard")
st.caption(
    "Each table ranks the **newest successful run of every model × technique** in one peer group "
    "(axis × workload × model size × hardware); older and failed runs are in the Explorer. "
    "Rank 1 = best by the metric's direction; pairs whose 95% intervals overlap share a rank. "
    "Hover a cell for the figure behind its rank. Rules: docs/leaderboard.md."
)

runs = ranking.peer_groups(ui.latest_ok_runs(snap, Filters()))
if runs.empty:
    st.info("The store has runs, but none succeeded yet: see the Explorer for their errors.")
    st.stop()
order = ranking.group_order(runs)
sizes = runs["group"].value_counts()
axis_of = runs.drop_duplicates("group").set_index("group")["axis"]
scenario_of = runs.drop_duplicates("group").set_index("group")["scenario"]

left, right = st.columns([2, 3])
axis = left.radio("Axis", list(dict.fromkeys(axis_of[order])), horizontal=True, key="axis")
group = right.selectbox("Peer group", [g for g in order if axis_of[g] == axis],
                        format_func=lambda g: f"{g} — {sizes[g]} pairs", key="group")
members = runs[runs["group"] == group].set_index("id")

metrics = ui.metric_rows(snap, tuple(members.index), tuple(ranking.RANKED_METRICS), ranking.ACCURACY_LIKE)
cells = ranking.rank_cells(metrics.rename(columns={"run_id": "entry"}), axis, scenario_of[group])
ranked_columns = cells.dropna(subset=["rank"]).drop_duplicates("column")

toggles = st.columns(2)
show_values = toggles[0].toggle("Show values in the cells", help="Otherwise hover a cell to see its figure.")
include_estimated = toggles[1].toggle(
    "Include estimated figures in the composite",
    help="Estimated figures (≈, hatched) are ranked only against each other and left out of the composite unless "
         "this is on.")  # fmt: skip
table_slot = st.container()

with st.expander("Composite score: weights"):
    st.caption(f"Composite = weighted harmonic mean of the min–max scores (1 = best in the group, 0 = worst; "
               f"a 0 counts as {ranking.FLOOR} so one worst metric does not zero the score). "
               "Set a weight to 0 to leave a metric out.")
    paper = {c.title for c in ranking.columns_for(axis, scenario_of[group]) if c.paper}
    inputs = st.columns(max(len(ranked_columns), 1))
    weights = {c: inputs[i].number_input(c, 0.0, 10.0, 1.0 if c in paper else 0.0, 0.5, key=f"w_{c}")
               for i, c in enumerate(ranked_columns["column"])}
comp = ranking.composite(cells, weights, include_estimated)

entries = (members[["technique", "model"]].assign(_rank=comp["rank"].reindex(members.index))
           .sort_values(["_rank", "technique", "model"], na_position="last"))

with table_slot:
    st.html(rank_table_html(entries, cells, comp, show_values))
    legend = " ".join(f'<span style="background:{c};padding:1px 8px;margin-right:4px">{t}</span>'
                      for c, t in zip(TIER_COLOURS.values(), ("top third", "middle third", "bottom third")))
    st.html(f'<div style="font-size:13px">{legend} &nbsp; <b>bold</b>: rank 1 &nbsp; '
            f'<span style="background-image:{HATCH};padding:1px 8px">≈ hatched</span> '
            f" {ui.ESTIMATED_NOTE}; ranked among estimated figures only &nbsp; –: not measured "
            "&nbsp; grey: metric without a direction (shown, not ranked)</div>")
    estimated = cells.dropna(subset=["entry"]).groupby("column", sort=False)["estimated"].all()
    if estimated.any() and not include_estimated:
        st.caption(f"Left out of the composite, estimated on every run here: {', '.join(estimated[estimated].index)}.")

named = cells.dropna(subset=["entry"]).join(members[["technique", "model", "created_at"]], on="entry")
named["score"] = ranking.scores(cells, include_estimated)
st.download_button("Download this table (CSV)", named.rename(columns={"entry": "run_id"}).to_csv(index=False),
                   file_name="effbench-rank-table.csv", mime="text/csv")
