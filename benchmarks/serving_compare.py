"""Static batching in process against continuous batching server-side, on the same model and load.

Runs `effbench run --multirun sweep=serve_tiny` into a store — the built-in tiny
Llama (BPE tokenizer) served by generate() in this process (backend=hf, batches
of up to 8) and by `transformers serve --continuous-batching`
(backend=transformers-serve), each a closed loop of 8 clients then a Poisson
rate sweep — and prints the comparison as the markdown tables of
docs/results/serving.md.

    .venv/bin/python benchmarks/serving_compare.py               # the sweep, then the tables
    .venv/bin/python benchmarks/serving_compare.py --quick       # a smoke run: smaller model and load
    .venv/bin/python benchmarks/serving_compare.py --report-only --sweep-dir DIR   # tables of an earlier sweep

Timings are only worth reading from a quiet machine: the script prints the load
average before and after the sweep.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from effbench.metrics.record import RunRecord, Source, Status
from effbench.report import fmt
from effbench.store import open_store

QUICK = ["model.hidden_size=64", "model.intermediate_size=172", "model.num_layers=2", "model.num_heads=4",
         "scenario.num_requests=16", "scenario.prompt_tokens=32", "scenario.output_tokens=16", "scenario.repeats=2",
         "scenario.rates=[2,8]"]

# (metric, statistic of its samples, label)
FIGURES = [
    ("serve.requests_per_s", "value", "requests/s"),
    ("serve.output_tokens_per_s", "value", "output tok/s (whole load)"),
    ("serve.steady_output_tokens_per_s", "value", "output tok/s (steady state)"),
    ("serve.steady_running", "value", "requests running (steady state, mean)"),
    ("latency.ttft_s", "p50", "TTFT p50"),
    ("latency.ttft_s", "p90", "TTFT p90"),
    ("latency.tpot_s", "p50", "TPOT p50"),
    ("latency.e2e_s", "p50", "e2e p50"),
    ("serve.goodput_requests_per_s", "value", "goodput (req/s meeting the SLOs)"),
    ("serve.slo_attainment", "value", "SLO attainment"),
    ("serve.error_rate", "value", "failed requests"),
    ("memory.peak_bytes", "value", "peak RSS (this process / the server's tree)"),
    ("compute.pcu", "value", "CPU use (PCU)"),
    ("server.cpu_seconds", "value", "server CPU time per load"),
    ("energy.joules_per_token", "value", "energy per output token"),
]
CURVE = [("serve.sweep_goodput_requests_per_s", "goodput"), ("serve.sweep_slo_attainment", "SLO met"),
         ("serve.sweep_ttft_p90_s", "p90 TTFT"), ("serve.sweep_error_rate", "failed")]


def engine(r: RunRecord) -> str:
    if r.config["backend"]["kind"] == "hf":
        return "in process: static batching (generate(), batches ≤ %d)" % r.config["scenario"]["max_batch_size"]
    command = r.provenance.get("server", {}).get("command", "")
    name = "transformers serve" if "transformers serve" in command else r.config["backend"]["kind"]
    return f"{name}: continuous batching"


def cell(r: RunRecord, name: str, stat: str = "value") -> str:
    metric = next((m for m in r.metrics if m.name == name), None)
    if metric is None:
        why = r.provenance.get("not_measured", {})
        family = name.split(".")[0]
        return f"not measured ({why[family]})" if family in why else "—"
    value = metric.value if stat == "value" else getattr(metric.summary, stat)
    text = fmt(value, metric.unit)
    return f"≈ {text}" if metric.source is Source.ESTIMATED else text


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def report(records: list[RunRecord]) -> str:
    records = sorted(records, key=lambda r: r.config["backend"]["kind"])
    sc = records[0].config["scenario"]
    out = [f"Runs: {', '.join(f'{r.id[:8]} ({engine(r)})' for r in records)}; model {records[0].model}, "
           f"hardware {records[0].hardware.get('label', '?')}.", "",
           f"Closed loop of {sc['concurrency']} clients, {sc['num_requests']} requests × {sc['repeats']} repeats, "
           f"{sc['prompt_tokens']} prompt + {sc['output_tokens']} output tokens; SLOs {sc['slo']}:", ""]
    out.append(table(["figure", *(engine(r) for r in records)],
                     [[label, *(cell(r, name, stat) for r in records)] for name, stat, label in FIGURES]))
    rates = records[0].metric("serve.sweep_rates").samples if any(
        m.name == "serve.sweep_rates" for m in records[0].metrics) else []
    if rates:
        out += ["", f"Poisson rate sweep, {sc['num_requests']} requests per rate (target: {sc['slo_target']:.0%} of "
                    "requests within the SLOs):", ""]
        header = ["rate (req/s)", *(f"{label} — {engine(r).split(':')[0]}" for _, label in CURVE for r in records)]
        rows = []
        for i, rate in enumerate(rates):
            row = [f"{rate:g}"]
            for name, _ in CURVE:
                for r in records:
                    m = next((m for m in r.metrics if m.name == name), None)
                    row.append(fmt(m.samples[i], m.unit) if m else "—")
            rows.append(row)
        out.append(table(header, rows))
        out += ["", "Knee (highest rate up to which every swept rate meets the target): "
                + "; ".join(f"{engine(r).split(':')[0]} {cell(r, 'serve.knee_rate')}" for r in records)]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="sqlite:///results/serving_compare.db")
    p.add_argument("--quick", action="store_true", help="a smoke run: a smaller model and load")
    p.add_argument("--report-only", action="store_true", help="print the tables of --sweep-dir without running")
    p.add_argument("--sweep-dir", help="the sweep's directory (its runs' sweep id); default: a new temporary one")
    p.add_argument("overrides", nargs="*", help="more effbench overrides, e.g. scenario.concurrency=16")
    args = p.parse_args()
    sweep_dir = args.sweep_dir or tempfile.mkdtemp(prefix="effbench-serving-compare-")
    if not args.report_only:
        print(f"load average before: {os.getloadavg()}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "effbench.cli", "run", "--multirun", "sweep=serve_tiny", "rerun=true",
                        f"store.url={args.store}", f"hydra.sweep.dir={sweep_dir}", *(QUICK if args.quick else []),
                        *args.overrides], check=True)
        print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    with open_store(args.store, read_only=True) as store:
        records = [r for r in store.runs(scenario="serve") if r.sweep_id == sweep_dir]
    failed = [r for r in records if r.status is not Status.OK]
    for r in failed:
        print(f"run {r.id[:8]} ({engine(r)}) {r.status.value}: {(r.error or '').splitlines()[0]}", file=sys.stderr)
    ok = [r for r in records if r.status is Status.OK]
    if not ok:
        print(f"no completed serve run with sweep id {sweep_dir} in {args.store}", file=sys.stderr)
        return 1
    print(report(ok))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
