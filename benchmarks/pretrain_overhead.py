"""Tokens/s of the pretraining runner vs a bare PyTorch training loop of the
same model, batch and optimizer, side by side in one process (target >= 0.97).

The runner's figure is its stored TT (measured window only); the bare loop is
timed over the same number of steps after the same warm-up. Rounds alternate
runner / bare so drift on these noisy shared cores hits both.
Run: .venv/bin/python benchmarks/pretrain_overhead.py [--rounds 3] [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from rich.table import Table

from effbench.distributed import Distributed
from effbench.hydra_app import CONFIG_DIR
from effbench.models import load_model
from effbench.report import console
from runners import pretrain
from runners.base import RunContext

ROWS, SEQ, WARMUP = 8, 128, 3


def runner_tokens_per_s(steps: int, store: str) -> float:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[
            "scenario=pretrain", "model=tiny", "technique=fp32", "hardware.device=cpu", f"store.url={store}",
            f"scenario.micro_batch_size={ROWS}", f"scenario.seq_len={SEQ}", f"scenario.warmup_steps={WARMUP}",
            f"scenario.token_budget={ROWS * SEQ * (WARMUP + steps)}", f"scenario.eval_every={steps // 2}",
            "scenario.save_artifact=false"])
    result = pretrain.run(OmegaConf.to_object(cfg), RunContext("bench", torch.device("cpu"), Distributed()))
    return next(m.value for m in result.metrics if m.name == "throughput.train_tokens_per_s")


def bare_tokens_per_s(steps: int) -> float:
    from effbench.config.schema import BuiltinModelConfig
    from effbench.data import load_corpus

    loaded = load_model(BuiltinModelConfig(name="tiny"))
    model = loaded.model.train()
    ids = torch.tensor(loaded.tokenizer(load_corpus().train_text, add_special_tokens=False).input_ids)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)

    def step():
        starts = torch.randint(0, len(ids) - SEQ, (ROWS,), generator=gen).tolist()
        x = torch.stack([ids[s : s + SEQ] for s in starts])
        model(input_ids=x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(WARMUP):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return ROWS * SEQ * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    runner, bare = [], []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(args.rounds):
            runner.append(runner_tokens_per_s(args.steps, f"sqlite:///{d}/s.db"))
            bare.append(bare_tokens_per_s(args.steps))
    ratios = [r / b for r, b in zip(runner, bare)]
    table = Table(title=f"pretraining runner vs bare loop: tiny Llama, {ROWS}×{SEQ} tokens/step, "
                        f"{args.steps} measured steps, {args.rounds} alternating rounds")
    for col in ("loop", "median tok/s", "per round tok/s"):
        table.add_column(col)
    table.add_row("runner (TT)", f"{statistics.median(runner):,.0f}", ", ".join(f"{x:,.0f}" for x in runner))
    table.add_row("bare loop", f"{statistics.median(bare):,.0f}", ", ".join(f"{x:,.0f}" for x in bare))
    console.print(table)
    console.print(f"ratio runner / bare: median {statistics.median(ratios):.3f}, per round "
                  f"{', '.join(f'{r:.3f}' for r in ratios)} (target ≥ 0.97)")


if __name__ == "__main__":
    main()
