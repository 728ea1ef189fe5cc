"""The peer group's table as HTML, value first: each cell the figure in its unit with
its sanity marks, the 95% interval, threshold and rank (or why it has none) on hover;
ranks in tier colours only when asked. Column headers link to the metric's docs."""

from __future__ import annotations

from html import escape

import pandas as pd

from effbench import compare
from effbench.report import fmt, number, scale
from leaderboard.ranking import PERFORMANCE, tier
from leaderboard.ui import doc_link

TIER_COLOURS = {1: "#b7e4c7", 2: "#fff1b8", 3: "#f9c9c9"}
HATCH = "repeating-linear-gradient(135deg, transparent 0 5px, rgba(0,0,0,.12) 5px 7px)"
_CELL = "padding:3px 5px;border:1px solid #ddd;text-align:right;white-space:nowrap"
_HEAD = "padding:3px 5px;border:1px solid #ddd;text-align:center;vertical-align:bottom"
_DIRECTION = {True: ("↑", "higher is better"), False: ("↓", "lower is better"), None: ("", "no direction: not ranked")}
WHY = {  # why a figure has no rank, for its tooltip
    "n<6": compare.FEW_REPEATS,
    "alone": "no other figure of its pool to rank it against",
    "no direction": "a metric without a direction (shown, not ranked)",
    "invalid": "an invalid figure: never ranked",
    "runtime-dominated": "runtime-dominated memory: it does not tell techniques apart, so it is not ranked",
    "FLOPs undercounted": "counted FLOPs far below the analytic count: not ranked",
}


def _td(text: str, tip: str = "", style: str = "", attrs: str = "") -> str:
    return f'<td style="{_CELL}{style}" title="{escape(tip)}"{attrs}>{text}</td>'


def _tier_style(tier_: float, estimated: bool = False, best: bool = False) -> str:
    style = f";background-color:{TIER_COLOURS[int(tier_)]}" if tier_ == tier_ else ""
    return style + (f";background-image:{HATCH}" if estimated else "") + (";font-weight:bold" if best else "")


def _interval(c: pd.Series) -> str:
    if c["exact"]:
        return "exact (analytic)"
    if c["low"] != c["low"]:
        return compare.FEW_REPEATS.replace("n<", f"n={int(c['n'])} <")
    what = "mean" if c["stat"] == "mean" else "median"
    return f"95% CI of the {what} {fmt(c['low'], c['unit'])} – {fmt(c['high'], c['unit'])}, n = {int(c['n'])}"


def _metric_cell(c: pd.Series, scale_: tuple[float, str], show_ranks: bool) -> str:
    """The number in the column's scale, its sanity marks; figures without an interval in italics."""
    value = ("≈ " if c["estimated"] else "") + fmt(c["value"], c["unit"])
    marks = (c["flags"] or "").replace("≈", "")
    tip = (f"{c['metric']}{' (mean)' if c['stat'] == 'mean' else ''} = {value}; {_interval(c)}; "
           f"source: {c['source']}; ties within {compare.threshold(c['metric']):.0%}")
    if c["flag_text"]:
        tip += f"; {c['flag_text']}"
    ranked = c["rank"] == c["rank"]
    tip += (f"; rank {int(c['rank'])} of {int(c['pool'])} {'estimated' if c['estimated'] else 'measured'} figures"
            if ranked else f"; not ranked: {WHY.get(c['why'], c['why'])}")
    text = ("≈" if c["estimated"] else "") + escape(number(c["value"], c["unit"], scale_))
    if not c["exact"] and c["low"] != c["low"]:
        text = f"<i>{text}</i>"
    if marks:
        text += f' <span style="color:#b45309">{escape(marks)}</span>'
    style = ";color:#9e9e9e" if c["invalid"] else ""
    if show_ranks and ranked:
        text += f' <sup data-rank="{int(c["rank"])}">#{int(c["rank"])}</sup>'
        style += _tier_style(c["tier"], c["estimated"], c["rank"] == 1)
    elif c["estimated"]:
        style += f";background-image:{HATCH}"
    return _td(text, tip, style, f' data-metric="{escape(c["metric"])}"')


def _header(column: str, metric: str | float, direction: bool | None, unit: str) -> str:
    if pd.isna(metric):
        return f'<th style="{_HEAD}" title="no run in this group has it">{escape(column)}<br><small>–</small></th>'
    arrow, words = _DIRECTION[direction]
    sub = (metric.removeprefix("quality.").replace(".", " ") + " " if column == PERFORMANCE else "") + unit
    return (f'<th style="{_HEAD}" title="{escape(f"{metric}: {words}; what it is and its caveats: docs")}">'
            f'{doc_link(compare.metric_doc(metric), column)}'
            f'<br><small style="font-weight:normal">{escape(sub)} {arrow}</small></th>')


def column_scales(cells: pd.DataFrame) -> dict[str, tuple[float, str]]:
    """One scale per column (that of its median figure), so a column reads in one unit."""
    out = {}
    for column, c in cells.dropna(subset=["entry"]).groupby("column", sort=False):
        out[column] = scale(c["unit"].iloc[0], float(c["value"].abs().median()))
    return out


def group_table_html(entries: pd.DataFrame, cells: pd.DataFrame, composite: pd.DataFrame | None,
                     show_ranks: bool = False) -> str:
    """entries: one row per entry (index = run id; columns technique, model) in display
    order; cells: `ranking.rank_cells`; composite: `ranking.composite`, or None to leave it out."""
    columns = cells.drop_duplicates("column")
    scales = column_scales(cells)
    by = {(e, c): row for (e, c), row in cells.dropna(subset=["entry"]).set_index(["entry", "column"]).iterrows()}
    head = [f'<th style="{_HEAD}">technique · model</th>']
    if composite is not None:
        head.append(f'<th style="{_HEAD}" title="weighted harmonic mean of the min–max scores of the ranked '
                    'figures (weights below)">Composite<br><small style="font-weight:normal">↑ score</small></th>')
    head += [_header(c.column, c.metric, c.higher_is_better, scales.get(c.column, (1, ""))[1])
             for c in columns.itertuples()]
    body = []
    for entry, e in entries.iterrows():
        row = [_td(f'<a href="run?id={escape(entry)}" target="_self"><b>{escape(e["technique"])}</b></a>'
                   f'<br><small>{escape(e["model"])}</small>', f"run {entry}: open its detail", ";text-align:left")]
        if composite is not None:
            if entry in composite.index:
                comp, pool = composite.loc[entry], len(composite)
                rank = int(comp["rank"])
                row.append(_td(f"{comp['score']:.2f} <sup>#{rank}</sup>",
                               f"score {comp['score']:.3f} from {int(comp['used'])} ranked figures; rank {rank} of "
                               f"{pool}", _tier_style(tier(rank, pool), best=rank == 1)))
            else:
                row.append(_td("–", "no ranked, weighted figure to score"))
        for column in columns["column"]:
            cell = by.get((entry, column))
            row.append(_td("–", "not measured") if cell is None else _metric_cell(cell, scales[column], show_ranks))
        body.append(f'<tr data-entry="{escape(entry)}">{"".join(row)}</tr>')
    return ('<div style="overflow-x:auto"><table data-testid="group-table" '
            'style="border-collapse:collapse;font-size:13px">'
            f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def legend_html(cells: pd.DataFrame, show_ranks: bool) -> str:
    """The marks this table uses, each with its meaning and docs."""
    items = []
    found = "".join(cells["flags"].dropna())
    for code, kind in compare.FLAG_KINDS.items():
        if kind.mark in found or code == "estimated" and cells["estimated"].fillna(False).any():
            items.append(f"{kind.mark} {doc_link(kind.doc, kind.meaning)}")
    if (cells["why"] == "n<6").any():
        items.append(f"<i>italics</i>: {escape(compare.FEW_REPEATS)}: shown, not ranked")
    if show_ranks:
        tiers = " ".join(f'<span style="background:{c};padding:1px 8px;margin-right:4px">{t}</span>'
                         for c, t in zip(TIER_COLOURS.values(), ("top third", "middle third", "bottom third")))
        items.append(f"#rank: ties share a rank (a difference counts only outside both 95% intervals and beyond "
                     f"the metric's threshold: {doc_link('docs/leaderboard.md#practical-significance', 'why')}); "
                     f"{tiers} <b>bold</b>: rank 1")
    items.append("–: not measured · hover a cell for its interval, source and rank · column names link to the docs")
    return '<div style="font-size:13px;line-height:1.7">' + "<br>".join(items) + "</div>"
