"""What effbench's measurement costs, measured side by side in one process.

1. Per-token timing: decode tokens/s of generate() with effbench's TokenTimer
   streamer vs a bare generate() (target ratio >= 0.97).
2. The whole tracked window (energy, memory, compute trackers + streamer) vs a
   bare generate(): wall-time ratio (target <= 1.03).
3. Seconds a quick sweep spends outside measured windows per pair (load,
   technique, warm-up, FLOP count, perplexity, record; target <= 5 s).

A and B alternate round by round so drift on these noisy shared cores hits both.
Run: .venv/bin/python benchmarks/overhead.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from rich.table import Table

from effbench.config.schema import BuiltinModelConfig
from effbench.metrics.compute import ComputeTracker
from effbench.metrics.energy import energy_tracker
from effbench.metrics.latency import TokenTimer
from effbench.metrics.memory import memory_tracker
from effbench.metrics.window import MeasuredWindow
from effbench.models import load_model
from effbench.report import console

PROMPT, OUTPUT = 128, 64


def generate_kwargs(tok_ids: torch.Tensor) -> dict:
    return dict(input_ids=tok_ids, attention_mask=torch.ones_like(tok_ids), max_new_tokens=OUTPUT,
                min_new_tokens=OUTPUT, do_sample=False, pad_token_id=0)


def timing_overheads(rounds: int) -> dict[str, list[float]]:
    cpu = torch.device("cpu")
    model = load_model(BuiltinModelConfig(name="tiny-llama")).model
    kw = generate_kwargs(torch.randint(3, 259, (1, PROMPT), generator=torch.Generator().manual_seed(0)))
    timer = TokenTimer(cpu)
    window = MeasuredWindow([energy_tracker(cpu, OUTPUT), memory_tracker(cpu),
                             ComputeTracker(cpu, torch.float32, 1, 1)], cpu)
    out: dict[str, list[float]] = {"bare": [], "streamer": [], "tracked": []}

    def bare():
        t0 = time.perf_counter()
        model.generate(**kw)
        return time.perf_counter() - t0

    def streamer():
        t0 = time.perf_counter()
        timer.reset()
        model.generate(**kw, streamer=timer)
        return time.perf_counter() - t0

    def tracked():
        with window.measure():
            timer.reset()
            model.generate(**kw, streamer=timer)
        return window.elapsed_s[-1]

    with torch.inference_mode():
        for fn in (bare, streamer, tracked):  # warm-up
            fn()
        for _ in range(rounds):
            for name, fn in (("bare", bare), ("streamer", streamer), ("tracked", tracked)):
                out[name].append(fn())
    return out


def sweep_outside_windows() -> list[tuple[str, float, float]]:
    """Run the quick sweep's three pairs in-process through the real code path."""
    from hydra import compose, initialize_config_dir

    from effbench.execute import execute
    from effbench.hydra_app import CONFIG_DIR

    rows = []
    with tempfile.TemporaryDirectory() as d, initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        for technique in ("fp32", "bf16", "fp16"):
            cfg = compose("config", overrides=[f"technique={technique}", f"store.url=sqlite:///{d}/s.db",
                                               "hardware.device=cpu"])
            record = execute(cfg)
            inside = sum(record.metric("latency.e2e_s").samples)
            rows.append((technique, record.duration_s, inside))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()

    t = timing_overheads(args.rounds)
    bare = statistics.median(t["bare"])
    table = Table(title=f"measurement overhead, tiny-llama fp32, {PROMPT}+{OUTPUT} tokens, {args.rounds} rounds "
                        f"(medians; range over rounds)")
    for col in ("loop", "median s", "tokens/s", "ratio to bare", "range of per-round ratio", "target"):
        table.add_column(col)
    for name, target in (("bare", ""), ("streamer", "tokens/s ratio ≥ 0.97"), ("tracked", "time ratio ≤ 1.03")):
        med = statistics.median(t[name])
        per_round = [a / b for a, b in zip(t[name], t["bare"])]
        ratio = bare / med if name == "streamer" else med / bare
        rng = [1 / r for r in per_round] if name == "streamer" else per_round
        table.add_row(name, f"{med:.4f}", f"{OUTPUT / med:.1f}", "" if name == "bare" else f"{ratio:.3f}",
                      "" if name == "bare" else f"{min(rng):.3f} – {max(rng):.3f}", target)
    console.print(table)

    rows = sweep_outside_windows()
    table = Table(title="quick sweep: time per pair outside measured windows (first pair pays imports and "
                        "codecarbon start-up)")
    for col in ("pair", "run total s", "in windows s", "outside s", "target"):
        table.add_column(col)
    for technique, total, inside in rows:
        table.add_row(f"tiny-llama × {technique}", f"{total:.2f}", f"{inside:.2f}", f"{total - inside:.2f}", "≤ 5 s")
    console.print(table)


if __name__ == "__main__":
    main()
