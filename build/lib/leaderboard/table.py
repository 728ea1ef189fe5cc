"""The paper-style rank table as HTML: ranks in tier colours, the figure behind each
rank on hover (or in the cell), estimated figures hatched and marked ≈."""

from __future__ import annotations

from html import escape

import pandas as pd

from effbench.report import fmt
from leaderboard.ranking import PERFORMANCE, tier

TIER_COLOURS = {1: "#b7e4c7", 2: "#fff1b8", 3: "#f9c9c9"}
HATCH = "repeating-linear-gradient(135deg, transparent 0 5px, rgba(0,0,0,.12) 5px 7px)"
_CELL = "padding:4px 10px;border:1px solid #ddd;text-align:center;white-space:nowrap"
_DIRECTION = {True: ("↑", "higher is better"), False: ("↓", "lower is better"), None: ("", "no direction: not ranked")}


def _td(text: str, tip: str = "", style: str = "") -> str:
    return f'<td style="{_CELL}{style}" title="{escape(tip)}">{text}</td>'


def _tier_style(tier_: float, estimated: bool = False, best: bool = False) -> str:
    style = f";background-color:{TIER_COLOURS[int(tier_)]}" if tier_ == tier_ else ";color:#777"
    return style + (f";background-image:{HATCH}" if estimated else "") + (";font-weight:bold" if best else "")


def _metric_cell(c: pd.Series, show_values: bool) -> str:
    mark = "≈" if c["estimated"] else ""
    value = fmt(c["value"], c["unit"])
    tip = (f"{c['metric']} = {mark}{value} (95% CI {fmt(c['low'], c['unit'])} – {fmt(c['high'], c['unit'])}), "
           f"source: {c['source']}")
    if c["rank"] != c["rank"]:  # no direction: the value, unranked
        return _td(escape(mark + value), tip, _tier_style(float("nan")))
    pool = "estimated" if c["estimated"] else "measured"
    tip += f"; rank {int(c['rank'])} of {int(c['pool'])} {pool} figures"
    text = f"{mark}{int(c['rank'])}" + (f"<br><small>{escape(value)}</small>" if show_values else "")
    return _td(text, tip, _tier_style(c["tier"], c["estimated"], c["rank"] == 1))


def _header(column: str, metric: str | float, direction: bool | None) -> str:
    if pd.isna(metric):
        return f'<th style="{_CELL}" title="no run in this group has it">{escape(column)}<br><small>–</small></th>'
    arrow, words = _DIRECTION[direction]
    sub = arrow + (" " + metric.removeprefix("quality.").replace(".", " ") if column == PERFORMANCE else "")
    return (f'<th style="{_CELL}" title="{escape(f"{metric}: {words}")}">{escape(column)}'
            f'<br><small style="font-weight:normal">{escape(sub)}</small></th>')


def rank_table_html(entries: pd.DataFrame, cells: pd.DataFrame, composite: pd.DataFrame,
                    show_values: bool = False) -> str:
    """entries: one row per entry (index = run id; columns technique, model) in display
    order; cells: `ranking.rank_cells`; composite: `ranking.composite`."""
    columns = cells.drop_duplicates("column")
    by = {(e, c): row for (e, c), row in cells.dropna(subset=["entry"]).set_index(["entry", "column"]).iterrows()}
    head = [f'<th style="{_CELL}">technique</th>', f'<th style="{_CELL}">model</th>',
            f'<th style="{_CELL}" title="weighted harmonic mean of the min–max scores (weights below)">'
            'Composite<br><small style="font-weight:normal">↑ score</small></th>',
            *(_header(c.column, c.metric, c.higher_is_better) for c in columns.itertuples())]
    body = []
    for entry, e in entries.iterrows():
        row = [_td(f'<a href="run?id={escape(entry)}" target="_self">{escape(e["technique"])}</a>',
                   f"run {entry}: open its detail", ";text-align:left"),
               _td(escape(e["model"]), style=";text-align:left")]
        if entry in composite.index:
            comp, pool = composite.loc[entry], len(composite)
            rank = int(comp["rank"])
            text = f"{rank}" + (f"<br><small>{comp['score']:.2f}</small>" if show_values else "")
            row.append(_td(text, f"score {comp['score']:.3f} from {int(comp['used'])} metrics; rank {rank} of {pool}",
                           _tier_style(tier(rank, pool), best=rank == 1)))
        else:
            row.append(_td("–", "no weighted metric to score"))
        for column in columns["column"]:
            cell = by.get((entry, column))
            row.append(_td("–", "not measured") if cell is None else _metric_cell(cell, show_values))
        body.append(f'<tr data-entry="{escape(entry)}">{"".join(row)}</tr>')
    return ('<div style="overflow-x:auto"><table data-testid="rank-table" '
            'style="border-collapse:collapse;font-size:14px">'
            f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
