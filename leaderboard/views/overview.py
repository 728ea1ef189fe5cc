"""Overview: one peer group's figures, value first; ranks, tiers and the composite on request."""

import streamlit as st

from leaderboard import ranking, ui
from leaderboard.queries import Filters
from leaderboard.table import group_table_html, legend_html

snap = ui.require_store()
st.title("effbench leaderboard")
st.caption(
    "Each table holds the **newest successful run of every model × technique** in one peer group "
    "(axis × scenario and workload × model size × hardware); older and failed runs are in the Explorer. "
    "Figures in their units; hover a cell for its 95% interval, source and rank. A difference counts only when "
    "it lies outside both intervals **and** beyond the metric's practical threshold. Rules: docs/leaderboard.md."
)

runs = ranking.peer_groups(ui.latest_ok_runs(snap, Filters()))
if runs.empty:
    st.info("The store has runs, but none succeeded yet: see the Explorer for their errors.")
    st.stop()
order = ranking.group_order(runs)
sizes = runs["group"].value_counts()
first = runs.drop_duplicates("group").set_index("group")
axes = list(dict.fromkeys(first.loc[order, "axis"]))
largest = sizes.index[0]  # open on the group with the most pairs, not a one-run one

left, right = st.columns([2, 3])
axis = left.radio("Axis", axes, index=axes.index(first.at[largest, "axis"]), horizontal=True, key="axis")
in_axis = [g for g in order if first.at[g, "axis"] == axis]
group = right.selectbox("Peer group", in_axis, index=in_axis.index(max(in_axis, key=lambda g: sizes[g])),
                        format_func=lambda g: f"{g} — {sizes[g]} pair{'s' if sizes[g] > 1 else ''}", key="group")
members = runs[runs["group"] == group].set_index("id")
scenario = first.at[group, "scenario"]

metrics = ui.metric_rows(snap, tuple(members.index), tuple(ranking.RANKED_METRICS), ranking.ACCURACY_LIKE)
cells = ranking.rank_cells(metrics.rename(columns={"run_id": "entry"}), axis, scenario)
ranked = cells.dropna(subset=["rank"])

toggles = st.columns(2)
show_ranks = toggles[0].toggle("Show ranks and colours", disabled=ranked.empty,
                               help="Ranks count only real differences; figures that cannot be told apart tie.")
include_estimated = toggles[1].toggle(
    "Include estimated figures in the composite", disabled=not show_ranks,
    help="Estimated figures (≈, hatched) are ranked only against each other and left out of the composite unless "
         "this is on.")  # fmt: skip
table_slot = st.container()

comp = None
if show_ranks:
    with st.expander("Composite score: weights"):
        st.caption(f"Composite = weighted harmonic mean of the min–max scores of the ranked figures (1 = best in the "
                   f"group, 0 = worst; a 0 counts as {ranking.FLOOR} so one worst metric does not zero the score). "
                   "Set a weight to 0 to leave a metric out.")
        paper = {c.title for c in ranking.columns_for(axis, scenario) if c.paper}
        titles = list(ranked.drop_duplicates("column")["column"])
        inputs = st.columns(max(len(titles), 1))
        weights = {c: inputs[i].number_input(c, 0.0, 10.0, 1.0 if c in paper else 0.0, 0.5, key=f"w_{c}")
                   for i, c in enumerate(titles)}
    comp = ranking.composite(cells, weights, include_estimated)

entries = members[["technique", "model"]]
entries = (entries.assign(_rank=comp["rank"].reindex(entries.index)).sort_values(["_rank", "technique", "model"],
                                                                                  na_position="last")
           if comp is not None else entries.sort_values(["technique", "model"]))

with table_slot:
    if len(members) == 1:
        st.caption("One pair in this group: its figures, nothing to rank them against.")
    elif ranked.empty:
        st.caption("No figure here can be ranked: too few repeats for an interval (n<6), or nothing to rank it "
                   "against. Values only.")
    st.html(group_table_html(entries, cells, comp, show_ranks))
    st.html(legend_html(cells, show_ranks))

named = cells.dropna(subset=["entry"]).join(members[["technique", "model", "created_at"]], on="entry")
named["score"] = ranking.scores(cells, include_estimated)
st.download_button("Download this table (CSV)", named.rename(columns={"entry": "run_id"}).to_csv(index=False),
                   file_name="effbench-group-table.csv", mime="text/csv")
