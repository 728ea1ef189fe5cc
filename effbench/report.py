"""Terminal tables (rich): a sweep's comparison, the run list, one run in full."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

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


def fmt(value: float, unit: str) -> str:
    if unit == "fraction":
        return f"{value * 100:.2f} %"
    for factor, name in _SCALES.get(unit, []):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {name}"
    if unit in _SCALES:
        return f"{value / _SCALES[unit][-1][0]:.3g} {_SCALES[unit][-1][1]}"
    number = f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return f"{number} {unit}".strip()


def source_label(source: Source) -> str:
    mark = "≈ " if source is Source.ESTIMATED else ""
    return f"[{_SOURCE_STYLE[source]}]{mark}{source.value}[/]"


def _cell(m: Metric) -> str:
    s = m.summary
    text = fmt(m.value, m.unit)
    if s.n > 1 and m.value:
        text += f" [dim]±{abs((s.ci95_high - s.ci95_low) / 2 / m.value) * 100:.1f}%[/]"
    return f"[yellow]≈ {text}[/]" if m.source is Source.ESTIMATED else text


def _ordered(names) -> list[str]:
    order = list(CATALOG)
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def print_comparison(records: list[RunRecord]) -> None:
    """Metrics as rows, pairs as columns: every family with its source."""
    ok = [r for r in records if r.status is Status.OK]
    if ok:
        table = Table(title="effbench results: median over repeats ± 95% CI half-width (relative)", show_lines=False)
        table.add_column("family", style="bold")
        table.add_column("metric")
        table.add_column("source")
        for r in ok:
            table.add_column(f"{r.model} × {r.technique}\n[dim]{r.id[:8]}[/]", justify="right")
        by_run = [{m.name: m for m in r.metrics} for r in ok]
        last_family = None
        for name in _ordered({n for d in by_run for n in d}):
            present = [d[name] for d in by_run if name in d]
            family = name.split(".")[0]
            sources = sorted({m.source for m in present}, key=lambda s: s.value)
            table.add_row(family if family != last_family else "", CATALOG[name].display if name in CATALOG else name,
                          " / ".join(source_label(s) for s in sources),
                          *[_cell(d[name]) if name in d else "–" for d in by_run],
                          end_section=False)
            last_family = family
        console.print(table)
        console.print("[dim]sources: counter = hardware energy counter, sampled = polling thread, "
                      "timer = clocks, analytic = counted/computed, [yellow]≈ estimated[/] = a model, not a measurement[/]")
    for r in records:
        if r.status is not Status.OK:
            console.print(f"[red]{r.status.value}[/] {r.model} × {r.technique} ({r.id[:8]}): "
                          f"{(r.error or '').splitlines()[0] if r.error else ''}")


# Headline columns; where scenarios differ, the first metric a run has fills the column.
_LIST_COLUMNS = {
    "AL": ("latency.e2e_s", "latency.step_s"),
    "IT / TT / serve": ("throughput.decode_tokens_per_s", "throughput.train_tokens_per_s", "serve.output_tokens_per_s"),
    "Peak mem": ("memory.peak_bytes",),
    "Energy": ("energy.joules",),
    "Compression": ("compression.ratio",),
    "Perplexity": ("quality.perplexity",),
}


def print_run_list(records: list[RunRecord]) -> None:
    table = Table(title=f"{len(records)} runs, newest first")
    for col in ("id", "time (UTC)", "status", "scenario", "model", "technique", "hardware"):
        table.add_column(col, no_wrap=col in ("id", "status"))
    for title in _LIST_COLUMNS:
        table.add_column(title, justify="right")
    style = {Status.OK: "green", Status.FAILED: "red", Status.SKIPPED: "yellow"}
    for r in records:
        by = {m.name: m for m in r.metrics}
        table.add_row(r.id[:8], r.created_at[:19].replace("T", " "), f"[{style[r.status]}]{r.status.value}[/]",
                      r.scenario, r.model, r.technique, str(r.hardware.get("label", "")),
                      *[next((_cell(by[n]) for n in names if n in by), "–") for names in _LIST_COLUMNS.values()])
    console.print(table)


def print_run(r: RunRecord) -> None:
    console.rule(f"run {r.id}")
    facts = Table.grid(padding=(0, 2))
    for k, v in [("status", r.status.value), ("created", r.created_at), ("axis / scenario", f"{r.axis} / {r.scenario}"),
                 ("model × technique", f"{r.model} × {r.technique}"), ("hardware", r.hardware.get("label")),
                 ("seed", r.seed), ("config hash", r.config_hash[:16]), ("sweep", r.sweep_id or "–"),
                 ("duration", f"{r.duration_s:.1f} s" if r.duration_s else "–"), ("tags", ", ".join(r.tags) or "–")]:
        facts.add_row(f"[bold]{k}[/]", str(v))
    console.print(facts)
    if r.error:
        console.print(f"[red]error:[/]\n{r.error}")
    if r.metrics:
        table = Table(title="metrics")
        for col in ("metric", "value", "source", "n", "p50", "p90", "p99", "95% CI", "how"):
            table.add_column(col, justify="right" if col in ("value", "n", "p50", "p90", "p99") else "left")
        for m in sorted(r.metrics, key=lambda m: _ordered([x.name for x in r.metrics]).index(m.name)):
            s = m.summary
            table.add_row(m.name, _cell(m), source_label(m.source), str(s.n), fmt(s.p50, m.unit), fmt(s.p90, m.unit),
                          fmt(s.p99, m.unit), f"{fmt(s.ci95_low, m.unit)} – {fmt(s.ci95_high, m.unit)}",
                          f"[dim]{m.note}[/]")
        console.print(table)
    console.print("[bold]hardware[/]", json.dumps(r.hardware, indent=1))
    console.print("[bold]software[/]", json.dumps(r.software, indent=1))
    console.print("[bold]config[/]", json.dumps(r.config, indent=1))
