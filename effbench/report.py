"""Terminal tables (rich): a run's or a sweep's results, the run list, one run in full,
runs compared. Figures are judged and flagged by effbench.compare, as on the leaderboard."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from effbench import compare
from effbench.metrics.catalog import CATALOG
from effbench.metrics.record import Metric, RunRecord, Source, Status

# Piped output (logs, CI) has no terminal width: don't squeeze tables to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)

_SCALES = {
    "B": [(2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"), (1, "B")],
    "s": [(1, "s"), (1e-3, "ms"), (1e-6, "µs")],
    "FLOP": [(1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1, "FLOP")],
    "FLOP/s": [(1e12, "TFLOP/s"), (1e9, "GFLOP/s"), (1e6, "MFLOP/s"), (1, "FLOP/s")],
    "B/s": [(1e12, "TB/s"), (1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s"), (1, "B/s")],
    "params": [(1e9, "B params"), (1e6, "M params"), (1e3, "k params"), (1, "params")],
}
_SOURCE_STYLE = {
    Source.COUNTER: "green",
    Source.SAMPLED: "cyan",
    Source.TIMER: "blue",
    Source.ANALYTIC: "magenta",
    Source.ESTIMATED: "yellow",
}


def scale(unit: str, value: float) -> tuple[float, str]:
    """The display scale of a figure: (factor, unit shown), e.g. ("B", 3e6) → (2**20, "MiB");
    a fraction shows as %."""
    if unit == "fraction":
        return 0.01, "%"
    steps = _SCALES.get(unit)
    if not steps:
        return 1.0, unit
    return next(((f, name) for f, name in steps if abs(value) >= f), steps[-1])


def number(value: float, unit: str, scale_: tuple[float, str] | None = None) -> str:
    """The figure's number in a scale (its own by default), without the unit."""
    factor = (scale_ or scale(unit, value))[0]
    x = value / factor
    if unit == "fraction":  # 2 decimals of a percent, 2 significant digits below 1%
        return f"{x:.2f}" if abs(x) >= 1 or x == 0 else f"{x:.2g}"
    if unit in _SCALES:
        return f"{x:.3g}"
    return f"{x:,.0f}" if abs(x) >= 1e4 else f"{x:.4g}"


def fmt(value: float, unit: str) -> str:
    """`12.3 ms`, `574 MiB`, `2.38 %`: the figure in its own scale, with its unit."""
    return f"{number(value, unit)} {scale(unit, value)[1]}".strip()


def source_label(source: Source) -> str:
    mark = "≈ " if source is Source.ESTIMATED else ""
    return f"[{_SOURCE_STYLE[source]}]{mark}{source.value}[/]"


def spread(fig: compare.Figure) -> str:
    """`±3.1%`: half the width of the figure's 95% interval relative to it; `n<6` where it has
    none; "" for an exact (analytic) figure."""
    if fig.exact:
        return ""
    if fig.interval is None:
        return "n<6"
    low, high = fig.interval
    return f"±{max(fig.value - low, high - fig.value) / abs(fig.value) * 100:.1f}%" if fig.value else ""


def _cell(m: Metric, found: Sequence[compare.Flag] = ()) -> str:
    """The value, the spread of its median (or n<6) and its flags' marks."""
    fig = compare.figure_of(m)
    text = fmt(m.value, m.unit)
    extra = spread(fig)
    if extra:
        text += f" [dim]{extra}[/]"
    marks = compare.marks(f for f in found if f.code != "estimated")
    if marks:
        text += f" [bold red]{escape(marks)}[/]"
    if m.invalid:
        text = f"[strike]{text}[/]"
    return f"[yellow]≈ {text}[/]" if m.source is Source.ESTIMATED else text


def print_flags(found: dict[str, list[compare.Flag]]) -> None:
    """One line per sanity flag (the figures it marks, why, the docs); estimated figures in one line."""
    by_flag: dict[compare.Flag, list[str]] = {}
    for name, flags_ in found.items():
        for f in flags_:
            by_flag.setdefault(f, []).append(name)
    for f, names in by_flag.items():
        if f.code != "estimated":
            console.print(f"[bold red]{escape(f.mark)}[/] {', '.join(names)}: {escape(f.text)} [dim]({f.doc})[/]")
    for f, names in by_flag.items():
        if f.code == "estimated":
            console.print(f"[yellow]≈[/] estimated: {', '.join(sorted(names))} [dim]({f.doc})[/]")


SOURCES = ("[dim]sources: counter = hardware energy counter, sampled = polling thread, timer = clocks, "
           "analytic = counted/computed, [yellow]≈ estimated[/] = a model, not a measurement[/]")


def print_comparison(records: list[RunRecord]) -> None:
    """A run's or a sweep's results: metrics as rows, runs as columns (labelled with their
    scenario and the workload keys that vary among them), every family with its source."""
    ok = [r for r in records if r.status is Status.OK]
    if ok:
        table = Table(title="effbench results: median ± half-width of its 95% interval (n<6: too few repeats "
                            "for one)", show_lines=False)
        table.add_column("family", style="bold")
        table.add_column("metric")
        table.add_column("source")
        for r, scenario in zip(ok, compare.scenario_labels(ok)):
            table.add_column(f"{r.model} × {r.technique}\n{escape(scenario)}\n[dim]{r.id[:8]}[/]", justify="right")
        by_run = [{m.name: m for m in r.metrics} for r in ok]
        found = [compare.flags(d) for d in by_run]
        last_family = None
        for name in compare.in_catalogue_order({n for d in by_run for n in d}):
            present = [d[name] for d in by_run if name in d]
            family = name.split(".")[0]
            sources = sorted({m.source for m in present}, key=lambda s: s.value)
            table.add_row(family if family != last_family else "", CATALOG[name].display if name in CATALOG else name,
                          " / ".join(source_label(s) for s in sources),
                          *[_cell(d[name], fl.get(name, ())) if name in d else "–" for d, fl in zip(by_run, found)],
                          end_section=False)
            last_family = family
        console.print(table)
        if len(ok) == 1:
            print_flags(found[0])
        else:  # a sweep: one line per kind of flag, naming the runs; `effbench show` gives each reason
            for code, kind in compare.FLAG_KINDS.items():
                runs = [f"{r.technique} ({r.id[:8]})" for r, fl in zip(ok, found)
                        if any(f.code == code for fs in fl.values() for f in fs)]
                if runs:
                    console.print(f"[bold red]{escape(kind.mark)}[/] {escape(kind.meaning)}: {', '.join(runs)} "
                                  f"[dim]({kind.doc}; `effbench show ID` says which figure and why)[/]")
        console.print(SOURCES)
    for r in records:
        if r.status is not Status.OK:
            console.print(f"[red]{r.status.value}[/] {r.model} × {r.technique} ({r.id[:8]}): "
                          f"{escape((r.error or '').splitlines()[0]) if r.error else ''}")


# ------------------------------------------------------------------------------ the run list


@dataclass(frozen=True)
class ListColumn:
    """A column of `effbench list`: a run field, or the first of some metrics a run has."""

    title: str
    field: Callable[[RunRecord], Any] | None = None
    metrics: tuple[str, ...] = ()
    justify: str = "left"


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


RUN_FIELDS = {
    "id": ListColumn("id", lambda r: r.id),
    "created": ListColumn("created", lambda r: r.created_at),
    "status": ListColumn("status", lambda r: r.status.value),
    "axis": ListColumn("axis", lambda r: r.axis),
    "scenario": ListColumn("scenario", lambda r: r.scenario),
    "model": ListColumn("model", lambda r: r.model),
    "technique": ListColumn("technique", lambda r: r.technique),
    "hardware": ListColumn("hardware", lambda r: r.hardware.get("label")),
    "engine": ListColumn("engine", lambda r: compare.engine(r.config)),
    "workload": ListColumn("workload", lambda r: compare.describe(w := compare.workload(r.config), w)),
    "tags": ListColumn("tags", lambda r: list(r.tags)),
    "sweep": ListColumn("sweep", lambda r: r.sweep_id),
    "duration": ListColumn("duration s", lambda r: r.duration_s, justify="right"),
    "error": ListColumn("error", lambda r: _first_line(r.error)),
}
# Headline figures: where scenarios differ, the first metric a run has fills the column.
METRIC_ALIASES = {
    "AL": ListColumn("AL", metrics=("latency.e2e_s", "latency.step_s"), justify="right"),
    "tput": ListColumn("tput", metrics=("throughput.decode_tokens_per_s", "throughput.train_tokens_per_s",
                                         "serve.output_tokens_per_s"), justify="right"),
    "mem": ListColumn("peak mem", metrics=("memory.peak_bytes",), justify="right"),
    "model_mem": ListColumn("model mem", metrics=("memory.model_resident_bytes",), justify="right"),
    "energy": ListColumn("energy", metrics=("energy.joules",), justify="right"),
    "J/tok": ListColumn("J/tok", metrics=("energy.joules_per_token",), justify="right"),
    "ppl": ListColumn("ppl", metrics=("quality.perplexity",), justify="right"),
    "compression": ListColumn("compr.", metrics=("compression.ratio",), justify="right"),
}
DEFAULT_LIST_COLUMNS = ("id", "created", "status", "scenario", "model", "technique", "AL", "tput", "mem", "ppl")
LIST_WIDTH = 100  # the default list fits a terminal this wide


def list_column(key: str) -> ListColumn:
    """A run field, a headline alias, or any metric name; KeyError naming the choices."""
    if key in RUN_FIELDS:
        return RUN_FIELDS[key]
    if key in METRIC_ALIASES:
        return METRIC_ALIASES[key]
    if key in CATALOG or "." in key:  # any stored metric, lm-eval scores included
        return ListColumn(CATALOG[key].display if key in CATALOG else key, metrics=(key,), justify="right")
    raise KeyError(f"unknown column {key!r}; choose from {', '.join([*RUN_FIELDS, *METRIC_ALIASES])}, or a metric "
                   "name (e.g. latency.ttft_s)")


def _metric(r: RunRecord, column: ListColumn) -> Metric | None:
    by = {m.name: m for m in r.metrics}
    return next((by[n] for n in column.metrics if n in by), None)


def _list_text(r: RunRecord, key: str, column: ListColumn) -> str:
    if column.field is None:
        return ""
    value = column.field(r)
    if key == "created":
        return value[5:16].replace("T", " ")
    if key == "id":
        return value[:8]
    if key == "status":
        return f"[{ {'ok': 'green', 'failed': 'red'}.get(value, 'yellow')}]{value}[/]"
    if isinstance(value, list):
        return ", ".join(value)
    return "–" if value is None else escape(f"{value:.1f}" if isinstance(value, float) else str(value))


def _list_cells(records: list[RunRecord], keys: Sequence[str]):
    """(column titles with their units, one row of rich-markup cells per run, the flag codes shown)."""
    columns = {k: list_column(k) for k in keys}
    scales, flagged, titles, rows = {}, [compare.flags({m.name: m for m in r.metrics}) for r in records], [], []
    for key, column in columns.items():
        title = column.title
        if column.metrics:
            values = [m.value for r in records if (m := _metric(r, column)) is not None]
            unit = next((m.unit for r in records if (m := _metric(r, column)) is not None), "")
            scales[key] = scale(unit, sorted(map(abs, values))[len(values) // 2]) if values else (1.0, unit)
        titles.append((title, scales.get(key, (1.0, ""))[1]))
    for r, found in zip(records, flagged):
        cells = []
        for key, column in columns.items():
            if not column.metrics:
                cells.append(_list_text(r, key, column))
                continue
            m = _metric(r, column)
            if m is None:
                cells.append("[dim]–[/]")
                continue
            marks = compare.marks(found.get(m.name, ()))
            text = number(m.value, m.unit, scales[key]) + (f" {escape(marks)}" if marks else "")
            cells.append(f"[strike]{text}[/]" if m.invalid else f"[yellow]{text}[/]" if "≈" in marks else text)
        rows.append(cells)
    shown = {f.code for r, found in zip(records, flagged) for column in columns.values() if column.metrics
             if (m := _metric(r, column)) is not None for f in found.get(m.name, ())}
    return titles, rows, shown


def print_run_list(records: list[RunRecord], keys: Sequence[str] = DEFAULT_LIST_COLUMNS,
                   order: str = "newest first") -> None:
    """The runs, in `order` (how the caller sorted them). Metric columns read in one scale
    each (its unit in the header); flagged figures carry their marks (≈ estimated,
    ◔ runtime-dominated, ⚠ invalid, ▽ FLOPs low)."""
    titles, rows, shown = _list_cells(records, keys)
    table = Table(title=f"{len(records)} runs, {order}", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for key, (title, unit) in zip(keys, titles):
        table.add_column(title + (f"\n[dim]{unit}[/]" if unit else ""), justify=list_column(key).justify,
                         no_wrap=key in ("id", "created", "status"), overflow="ellipsis", max_width=24)
    for cells in rows:
        table.add_row(*cells)
    console.print(table)
    for code in (c for c in compare.FLAG_KINDS if c in shown):
        kind = compare.FLAG_KINDS[code]
        console.print(f"[dim]{kind.mark} {kind.meaning.split(' — ')[0]}[/]")
    if shown:
        console.print("[dim]`effbench show ID` says which figure and why[/]")


def list_markdown(records: list[RunRecord], keys: Sequence[str]) -> str:
    """The list as a Markdown table (for results pages): the same cells and marks, units in the header."""
    from rich.text import Text

    titles, rows, shown = _list_cells(records, keys)
    head = [f"{title} ({unit})" if unit else title for title, unit in titles]
    right = [list_column(k).justify == "right" for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(Text.from_markup(c).plain.replace("|", "\\|") for c in cells) + " |"
              for cells in rows]
    notes = [f"{compare.FLAG_KINDS[c].mark} {compare.FLAG_KINDS[c].meaning.split(' — ')[0]}"
             for c in compare.FLAG_KINDS if c in shown]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def list_json(records: list[RunRecord], keys: Sequence[str]) -> list[dict[str, Any]]:
    """The list as JSON-ready dicts: run fields raw; a metric column as {metric, value, unit,
    median_ci95 (null below 6 samples), n, source, flags, invalid}."""
    columns = {k: list_column(k) for k in keys}
    out = []
    for r in records:
        found = compare.flags({m.name: m for m in r.metrics})
        row: dict[str, Any] = {}
        for key, column in columns.items():
            if column.field is not None:
                row[key] = column.field(r)
                continue
            m = _metric(r, column)
            if m is None:
                row[key] = None
                continue
            s = m.summary
            row[key] = {"metric": m.name, "value": m.value, "unit": m.unit,
                        "median_ci95": None if s.median_ci95_low is None else [s.median_ci95_low, s.median_ci95_high],
                        "n": s.n, "source": m.source.value, "flags": [f.code for f in found.get(m.name, ())],
                        "invalid": m.invalid}
        out.append(row)
    return out


# --------------------------------------------------------------------------- one run in full


def print_run(r: RunRecord) -> None:
    console.rule(f"run {r.id}")
    facts = Table.grid(padding=(0, 2))
    work = compare.workload(r.config)
    for k, v in [("status", r.status.value), ("created", r.created_at), ("axis / scenario", f"{r.axis} / {r.scenario}"),
                 ("workload", compare.describe(work, work)), ("engine", compare.engine(r.config)),
                 ("model × technique", f"{r.model} × {r.technique}"), ("hardware", r.hardware.get("label")),
                 ("seed", r.seed), ("config hash", r.config_hash[:16]), ("sweep", r.sweep_id or "–"),
                 ("duration", f"{r.duration_s:.1f} s" if r.duration_s else "–"), ("tags", ", ".join(r.tags) or "–")]:
        facts.add_row(f"[bold]{k}[/]", escape(str(v)))
    console.print(facts)
    if r.error:
        console.print(f"[red]error:[/]\n{escape(r.error)}")
    if r.metrics:
        found = compare.flags({m.name: m for m in r.metrics})
        table = Table(title="metrics: value (the median unless the metric says otherwise) ± half-width of its 95% "
                            "interval; n<6: too few repeats for one")
        for col in ("metric", "value", "source", "n", "p90", "p99", "95% CI of median", "95% CI of mean", "how"):
            table.add_column(col, justify="right" if col in ("value", "n", "p90", "p99") else "left")
        for name in compare.in_catalogue_order([m.name for m in r.metrics]):
            m, s = r.metric(name), r.metric(name).summary
            median_ci = ("exact" if m.source is Source.ANALYTIC else "n<6" if s.median_ci95_low is None
                         else f"{fmt(s.median_ci95_low, m.unit)} – {fmt(s.median_ci95_high, m.unit)}")
            table.add_row(m.name, _cell(m, found.get(name, ())), source_label(m.source), str(s.n), fmt(s.p90, m.unit),
                          fmt(s.p99, m.unit), median_ci,
                          f"{fmt(s.ci95_low, m.unit)} – {fmt(s.ci95_high, m.unit)}" if s.n > 1 else "–",
                          f"[dim]{escape(m.note)}[/]")
        console.print(table)
        print_flags(found)
    console.print("[bold]hardware[/]", escape(json.dumps(r.hardware, indent=1)))
    console.print("[bold]software[/]", escape(json.dumps(r.software, indent=1)))
    console.print("[bold]config[/]", escape(json.dumps(r.config, indent=1)))


# ------------------------------------------------------------------------- runs compared

_VERDICT_STYLE = {compare.Verdict.BETTER: "green", compare.Verdict.WORSE: "red", compare.Verdict.DIFFERS: "yellow",
                  compare.Verdict.TIE: "dim", compare.Verdict.UNDECIDED: "dim", compare.Verdict.INVALID: "red",
                  compare.Verdict.NOT_COMPARABLE: "dim"}


def print_compare(records: list[RunRecord]) -> None:
    """Runs side by side against the first (`effbench compare`), with the leaderboard's marks:
    each cell the run's figure (± its median's interval, or n<6), its flags, and against the
    baseline the verdict mark and the ratio."""
    result = compare.compare_runs(records)
    for k, label in enumerate(result.labels):
        console.print(f"[bold]{'baseline' if k == 0 else f'run {k}':8s}[/] {escape(label)}")
    for note in result.notes:
        console.print(f"[yellow]![/] {escape(note)}")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("metric", no_wrap=True, overflow="ellipsis", max_width=36)
    for k, r in enumerate(records):
        table.add_column(f"{'baseline' if k == 0 else f'run {k}'}\n{escape(r.technique)}\n[dim]{r.id[:8]}[/]",
                         justify="right")
    for name, judged in result.rows.items():
        cells = [name]
        for k, j in enumerate(judged):
            m = records[k].metric(name) if j.figure is not None else None
            text = _cell(m, j.flags) if m is not None else "–"
            if j.verdict is not None:
                ratio = j.change.rpartition("· ")[2] if "×" in j.change else ""
                text += f"  [{_VERDICT_STYLE[j.verdict]}]{j.verdict.mark} {ratio}[/]".rstrip()
            cells.append(text)
        table.add_row(*cells)
    console.print(table)
    console.print("[dim]" + "\n".join(f"{v.mark} {compare.MEANINGS[v]}" for v in compare.Verdict) + "[/]")
    console.print("[dim]±: half-width of the median's 95% interval (n<6: too few repeats for one); practical "
                  "thresholds: docs/leaderboard.md#practical-significance[/]")
