"""How fast the leaderboard opens on a large store: fills a temporary SQLite store with
synthetic runs (tagged `synthetic`; never mix them into a real store) and times the
overview and the explorer, cold (empty cache) and warm, through Streamlit's AppTest.

    .venv/bin/python benchmarks/leaderboard_load.py [--runs 100000] [--keep store.db]

Prints the figures; a benchmark, not a test. The target is an overview under 3 s at 100,000 runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from scipy import stats
from sqlalchemy import insert

from effbench.metrics.catalog import CATALOG
from effbench.store import open_store
from effbench.store.schema import MetricRow, RunRow

APP = Path(__file__).resolve().parent.parent / "leaderboard" / "app.py"
SAMPLES = 5  # per metric
# name: (parameters, ...) — sizes across the buckets, the paper's 0.5B / 1.5B / 3B included.
MODELS = {f"synth-{p / 1e9:g}b": p for p in (5e6, 3e7, 1.25e8, 4.9e8, 1.54e9, 3.09e9, 7.6e9, 1.4e10, 7.2e10)}
AXES = {
    "inference": ("inference", ["fp32", "bf16", "fp16", "int8", "int4-nf4", "int4-hqq"]),
    "architecture": ("pretrain", ["mha", "gqa", "mqa", "mla", "moe-top2", "mamba2"]),
    "finetuning": ("finetune", ["lora", "rslora", "dora", "pissa", "freeze", "full"]),
}
HARDWARE = ["NVIDIA H100 80GB HBM3 x1", "NVIDIA H200 x1", "NVIDIA A100-SXM4-80GB x1", "CPU Intel Xeon (2 cores)"]
COMMON = ["model.parameters", "memory.amu", "memory.peak_bytes", "compute.mfu", "compute.pcu", "energy.avg_power_w",
          "energy.joules", "energy.joules_per_token", "quality.loss", "quality.perplexity"]
SCENARIO_METRICS = {
    "inference": ["latency.e2e_s", "latency.ttft_s", "latency.tpot_s", "throughput.decode_tokens_per_s",
                  "compression.ratio", "compression.mcr"],
    "pretrain": ["latency.step_s", "throughput.train_tokens_per_s"],
    "finetune": ["latency.step_s", "throughput.samples_per_s"],
}
# Field sets of real records, so JSON parsing costs what it would on a real store.
HARDWARE_FACTS = {"device_type": "cuda", "gpu_name": "synthetic", "gpu_count": 1, "gpu_memory_bytes": 85899345920,
                  "driver": "550.54", "cuda": "12.4", "cpu_model": "synthetic", "cpu_cores": 32,
                  "memory_bytes": 540000000000, "platform": "Linux-synthetic"}
SOFTWARE = {"python": "3.11.7", "torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2", "effbench": "0.1.0"}


def _config(model: str, technique: str, scenario: str, batch: int) -> dict:
    return {
        "model": {"name": model, "source": "builtin", "hidden_size": 256, "num_layers": 4, "num_heads": 8,
                  "intermediate_size": 688, "max_position": 1024, "tokenizer": "byte", "init_seed": 0,
                  "arch": "llama", "arch_options": {}},
        "technique": {"name": technique, "method": "synthetic"},
        "scenario": {"name": scenario, "batch_size": batch, "prompt_tokens": 128, "output_tokens": 64, "warmup": 1,
                     "repeats": 5, "eval_context": 256, "eval_max_tokens": 16384},
        "data": {"source": "pydoc", "path": None, "text_field": "text", "heldout_fraction": 0.1,
                 "max_chars": 2000000},
        "hardware": {"device": "auto", "threads": None}, "store": {"url": None}, "seed": 0, "rerun": False,
        "tags": ["synthetic"],
    }


T975 = float(stats.t.ppf(0.975, SAMPLES - 1))


def _runs_and_metrics(n: int, rng: np.random.Generator, start: datetime) -> tuple[list[dict], list[dict]]:
    runs, metrics = [], []
    models, axes = list(MODELS), list(AXES)
    for k in range(n):
        axis = axes[rng.integers(len(axes))]
        scenario, techniques = AXES[axis]
        model, technique = models[rng.integers(len(models))], techniques[rng.integers(len(techniques))]
        hardware = HARDWARE[rng.integers(len(HARDWARE))]
        batch = int(rng.choice([1, 8]))
        status = rng.choice(["ok", "failed", "skipped"], p=[0.95, 0.04, 0.01])
        run_id = uuid.UUID(int=int(rng.integers(2**63)) << 64 | k).hex
        runs.append({
            "id": run_id, "created_at": (start + timedelta(minutes=5 * k)).isoformat(timespec="microseconds"),
            "status": status, "error": "RuntimeError: synthetic failure" if status == "failed" else None,
            "axis": axis, "scenario": scenario, "model": model, "technique": technique,
            "config": _config(model, technique, scenario, batch),
            "config_hash": f"synthetic-{model}-{technique}-{batch}",
            "hardware": {**HARDWARE_FACTS, "label": hardware}, "software": SOFTWARE, "seed": 0, "tags": ["synthetic"],
            "sweep_id": None, "duration_s": 1.0, "artifact": None, "warnings": [], "provenance": {},
        })  # fmt: skip
        if status != "ok":
            continue
        names = COMMON + SCENARIO_METRICS[scenario]
        centre = rng.lognormal(0.0, 1.0, len(names))
        samples = centre[:, None] * (1 + 0.05 * rng.standard_normal((len(names), SAMPLES)))
        samples[0] = MODELS[model]  # exact parameter count
        mean, std = samples.mean(axis=1), samples.std(axis=1, ddof=1)
        median, p90, p99 = np.percentile(samples, [50, 90, 99], axis=1)
        half = T975 * std / np.sqrt(SAMPLES)
        for i, name in enumerate(names):
            spec = CATALOG[name]
            metrics.append({
                "run_id": run_id, "name": name, "value": median[i], "unit": spec.unit,
                "source": "estimated" if name.startswith("energy") and "CPU" in hardware else "timer",
                "higher_is_better": spec.higher_is_better, "note": "synthetic", "samples": samples[i].tolist(),
                "n": SAMPLES, "median": median[i], "mean": mean[i], "p90": p90[i], "p99": p99[i], "std": std[i],
                "ci95_low": mean[i] - half[i], "ci95_high": mean[i] + half[i],
            })  # fmt: skip
    return runs, metrics


def fill(url: str, n: int, chunk: int = 5000) -> None:
    store = open_store(url)
    store.migrate()  # creates the tables
    rng = np.random.default_rng(0)
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    with store.engine.begin() as conn:
        for k in range(0, n, chunk):
            runs, metrics = _runs_and_metrics(min(chunk, n - k), rng, start + timedelta(minutes=5 * k))
            conn.execute(insert(RunRow.__table__), runs)
            conn.execute(insert(MetricRow.__table__), metrics)
    store.close()


def timed(label: str, fn, repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    print(f"  {label:<52} {min(times):7.3f} s" + (f"  (best of {repeat})" if repeat > 1 else ""))
    return min(times)


def page(path: str, cold: bool):
    """Run one page of the app start to end, as a first visitor would (cold: empty cache)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    def run() -> None:
        if cold:
            st.cache_data.clear()
        at = AppTest.from_file(str(APP), default_timeout=120).switch_page(path).run()
        assert not at.exception, at.exception

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--keep", metavar="PATH", help="write the store here and keep it (default: a temp file)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # Streamlit warns that AppTest and the import run without a server
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep or Path(tmp) / "synthetic.db").resolve()
        url = f"sqlite:///{path}"
        if not path.exists():
            t = time.perf_counter()
            fill(url, args.runs)
            print(f"filled {path} with {args.runs:,} synthetic runs in {time.perf_counter() - t:.1f} s "
                  f"({path.stat().st_size / 2**20:.0f} MiB)")
        os.environ["EFFBENCH_DB_URL"] = url

        from leaderboard import queries, ranking

        store = queries.open_store(url)
        print(f"store: {queries.count_runs(store):,} runs")
        print("queries (no cache):")
        runs = ranking.peer_groups(queries.latest_ok_runs(store))
        timed("newest ok run per pair (overview)", lambda: queries.latest_ok_runs(store), 3)
        print(f"    -> {len(runs):,} pairs in {runs['group'].nunique():,} peer groups")
        biggest = runs[runs["group"] == runs["group"].value_counts().index[0]]
        timed(f"rank table of the largest group ({len(biggest)} pairs)", lambda: ranking.composite(
            ranking.rank_cells(queries.metric_rows(store, list(biggest["id"]), ranking.RANKED_METRICS,
                                                   ranking.ACCURACY_LIKE).rename(columns={"run_id": "entry"}),
                               biggest["axis"].iloc[0]), {}), 3)
        timed("facets (filter options)", lambda: queries.facets(store), 3)
        timed("count + first page of 100 runs", lambda: (queries.count_runs(store), queries.run_page(
            store, queries.Filters())), 3)
        timed("first page sorted by a metric", lambda: queries.run_page(store, queries.Filters(),
                                                                       sort="latency.e2e_s"), 3)
        print("server start (`python -m leaderboard` imports the pages before it serves):")
        timed("importing the pages' modules", lambda: subprocess.run(
            [sys.executable, "-c", "import leaderboard.table, leaderboard.ui"], check=True, stderr=subprocess.DEVNULL))
        print("pages (Streamlit AppTest, the whole page script):")
        for name, script in (("overview", "views/overview.py"), ("explorer", "views/explorer.py")):
            timed(f"{name}, cold cache (first visitor)", page(script, cold=True), 2)
            timed(f"{name}, warm cache", page(script, cold=False), 3)


if __name__ == "__main__":
    main()
