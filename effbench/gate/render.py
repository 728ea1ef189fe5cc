"""The gate's verdicts as a terminal table (rich) and as Markdown (CI summaries)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from rich.table import Table
from rich.text import Text

from effbench.gate.core import CheckResult, GateResult
from effbench.gate.stats import Verdict
from effbench.metrics.catalog import CATALOG
from effbench.report import console, fmt

_STYLE = {Verdict.PASS: "green", Verdict.REGRESSION: "bold red", Verdict.IMPROVEMENT: "cyan",
          Verdict.INCONCLUSIVE: "yellow"}
_ICON = {Verdict.PASS: "✅", Verdict.REGRESSION: "❌", Verdict.IMPROVEMENT: "🚀", Verdict.INCONCLUSIVE: "⚠️"}


def _value(c: CheckResult, v: float | None) -> str:
    if v is None:
        return "–"
    text = fmt(v, c.unit)
    return f"≈ {text}" if c.estimated else text


def _change(c: CheckResult) -> str:
    return "–" if math.isnan(c.change) else f"{c.change:+.1%}"


def _allowed(c: CheckResult) -> str:
    if c.tolerance is None:
        return "–"
    if c.higher_is_better is None:
        return f"±{c.tolerance:.1%}"
    return f"{'-' if c.higher_is_better else '+'}{c.tolerance:.1%}"


def _n(c: CheckResult) -> str:
    return f"{c.n_baseline}/{c.n_candidate}" if c.n_baseline or c.n_candidate else "–"


def _metric(c: CheckResult) -> str:
    return CATALOG[c.metric].display + f" ({c.metric})" if c.metric in CATALOG else c.metric


NO_CHECK = ("no check ran: no gated metric was recorded by both sides, so this gate tested nothing "
            "(check the metric names in the gate file and the scenario the runs measured)")


def headline(result: GateResult, strict: bool = False) -> str:
    counts = ", ".join(f"{result.count(v)} {v.value}" for v in Verdict)
    verdict = "FAIL" if result.exit_code(strict) else "PASS"
    text = (f"effbench gate {verdict}: {result.candidate} vs {result.baseline}, {result.n_pairs} pairs, "
            f"{len(result.checks)} checks ({counts})")
    return text if result.checks else f"{text}: NO CHECK RAN"


def method_line(result: GateResult) -> str:
    """How the checks were tested and how the whole set's false alarms are controlled."""
    g = result.gate
    how = result.design or (f"{g.method}, one-sided alpha {g.alpha}, ≥ {g.min_samples} samples ({g.pool}) per side, "
                            f"pairs matched by {g.match}")
    return "; ".join(x for x in (how, result.multiplicity or "no tested checks: no multiplicity control needed",
                                 f"gate: {g.source}") if x)


def print_result(result: GateResult, strict: bool = False) -> None:
    # Text, not markup strings: selectors such as tag:ab:ID would otherwise turn into emoji (:ab:),
    # and brackets in a detail into markup.
    table = Table(title=Text(f"effbench gate: candidate {result.candidate} vs baseline {result.baseline}"),
                  caption=Text(method_line(result)))
    for col, justify in [("pair", "left"), ("metric", "left"), ("baseline", "right"), ("candidate", "right"),
                         ("change", "right"), ("allowed", "right"), ("n b/c", "right"), ("verdict", "left"),
                         ("why", "left")]:
        table.add_column(col, justify=justify, overflow="fold")
    last = None
    for c in result.checks:
        table.add_row(Text(c.pair if c.pair != last else ""), Text(_metric(c)), _value(c, c.baseline),
                      _value(c, c.candidate), _change(c), _allowed(c), _n(c),
                      Text(c.verdict.value, style=_STYLE[c.verdict]), Text(c.detail, style="dim"))
        last = c.pair
    console.print(table)
    for line in result.resolution:
        console.print(Text(line))
    if not result.checks:
        console.print(Text(f"WARNING: {NO_CHECK}", style="bold red"))
    for note in result.notes:
        console.print(Text(f"note: {note}", style="dim"))
    console.print(Text(headline(result, strict), style="bold red" if result.exit_code(strict) else "bold green"))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(result: GateResult, strict: bool = False) -> str:
    icon = "❌" if result.exit_code(strict) else "✅"
    lines = [f"### {icon} {_md_escape(headline(result, strict))}", ""]
    if result.regressions:
        lines += ["**Regressions:** " + "; ".join(f"{_md_escape(c.pair)} — `{c.metric}` {_change(c)}"
                                                  for c in result.regressions), ""]
    lines += ["| pair | metric | baseline | candidate | change | allowed | n b/c | verdict | why |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for c in result.checks:
        lines.append("| " + " | ".join(_md_escape(x) for x in [
            c.pair, f"`{c.metric}`", _value(c, c.baseline), _value(c, c.candidate), _change(c), _allowed(c), _n(c),
            f"{_ICON[c.verdict]} {c.verdict.value}", c.detail]) + " |")
    lines.append("")
    if not result.checks:
        lines += [f"**⚠️ WARNING: {NO_CHECK}**", ""]
    lines += [f"- {_md_escape(line)}" for line in result.resolution]
    lines.append(f"_{_md_escape(method_line(result))}. ≈ marks estimated figures._")
    if result.notes:
        lines += ["", "<details><summary>notes</summary>", ""]
        lines += [f"- {_md_escape(n)}" for n in result.notes]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def write_markdown(result: GateResult, path: str | None = None, strict: bool = False) -> list[str]:
    """Write the Markdown to `path` and append it to $GITHUB_STEP_SUMMARY when set; returns where."""
    text = to_markdown(result, strict)
    written = []
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        written.append(path)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(text + "\n")
        written.append(summary)
    return written
