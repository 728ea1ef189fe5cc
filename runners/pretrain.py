"""Pretraining scenario: train from scratch for a token budget and measure it.

Steps: build (size preset × architecture technique) → warm-up steps (trained,
not measured) → measured segments of `eval_every` steps, each one window, with
held-out loss between them → final held-out perplexity → checkpoint artifact.
Under torchrun every rank trains its slice of each global batch (DDP); rank 0
gathers the ranks' figures and writes the one record.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from effbench.artifacts import save_artifact
from effbench.config.schema import PretrainScenario, RunConfig
from effbench.data import load_corpus
from effbench.distributed import Distributed
from effbench.hardware import synchronize
from effbench.metrics.catalog import from_samples, make_metric
from effbench.metrics.compute import ComputeTracker, count_flops
from effbench.metrics.energy import energy_tracker
from effbench.metrics.memory import memory_tracker
from effbench.metrics.quality import heldout_loss, perplexity_metrics
from effbench.metrics.record import Metric, Source
from effbench.metrics.window import MeasuredWindow
from effbench.models import load_model, parameter_counts
from effbench.models.architectures.base import active_parameters
from effbench.techniques import get_technique
from runners.base import RunContext, ScenarioResult


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"scenario.precision={precision!r}; choose auto, fp32 or bf16")
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16"


class BatchSampler:
    """Global batches of random real-text windows, identical on every rank (same
    seed); each rank takes its contiguous slice, so N ranks see exactly the
    batch one process would."""

    def __init__(self, ids: torch.Tensor, seq_len: int, global_rows: int, seed: int, dist: Distributed):
        if len(ids) <= seq_len + 1:
            raise ValueError(f"training text has {len(ids)} tokens; scenario.seq_len={seq_len} needs more")
        self.ids, self.seq_len, self.rows, self.dist = ids, seq_len, global_rows, dist
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        starts = torch.randint(0, len(self.ids) - self.seq_len, (self.rows,), generator=self.gen)
        batch = torch.stack([self.ids[s : s + self.seq_len] for s in starts.tolist()])
        per_rank = self.rows // self.dist.world_size
        return batch[self.dist.rank * per_rank : (self.dist.rank + 1) * per_rank]


def _merge_ranks(per_rank: list[list[Metric]], dist: Distributed) -> list[Metric]:
    """Rank 0's view, with energy summed over devices and memory as max (and mean) over ranks."""
    if not dist.enabled:
        return per_rank[0]
    by_rank = [{m.name: m for m in metrics} for metrics in per_rank]
    merged = []
    for name, m in by_rank[0].items():
        samples_by_rank = [r[name].samples for r in by_rank]
        if name in ("energy.joules", "energy.dynamic_joules", "energy.avg_power_w", "energy.idle_power_w",
                    "energy.joules_per_token"):
            samples = [sum(s) for s in zip(*samples_by_rank)]
            merged.append(from_samples(name, samples, m.source, f"{m.note}; summed over {dist.world_size} ranks"))
        elif name.startswith("memory.") and name != "memory.amu":
            samples = [max(s) for s in zip(*samples_by_rank)]
            merged.append(from_samples(name, samples, m.source, f"{m.note}; max over {dist.world_size} ranks"))
            if name == "memory.peak_bytes":
                means = [sum(s) / len(s) for s in zip(*samples_by_rank)]
                merged.append(from_samples("memory.peak_bytes_rank_mean", means, m.source, m.note))
        elif name == "energy.tokens_per_joule":
            continue  # recomputed below from the summed energy
        else:
            merged.append(m)
    if "energy.joules_per_token" in by_rank[0]:
        jpt = next(m for m in merged if m.name == "energy.joules_per_token")
        merged.append(from_samples("energy.tokens_per_joule", [1 / x for x in jpt.samples], jpt.source, jpt.note))
    return merged


def run(cfg: RunConfig, ctx: RunContext) -> ScenarioResult:
    sc: PretrainScenario = cfg.scenario
    device, dist = ctx.device, ctx.dist
    technique = get_technique(cfg.technique.method)
    technique.check_device(device)
    bf16 = use_bf16(sc.precision, device)

    loaded = load_model(technique.configure_model(cfg.model, cfg.technique))
    model = technique.apply(loaded.model, cfg.technique, device).train()
    params = parameter_counts(model)
    active = active_parameters(model)
    if dist.is_main:
        tqdm.write(f"{cfg.model.name} × {cfg.technique.name}: {params['total']:,} parameters "
                   f"({active:,} active, {params['non_embedding']:,} non-embedding)")

    corpus = load_corpus(cfg.data.source, cfg.data.path, cfg.data.text_field, cfg.data.heldout_fraction,
                         cfg.data.max_chars)
    tok = loaded.tokenizer
    train_ids = torch.tensor(tok(corpus.train_text, add_special_tokens=False).input_ids)
    heldout_ids = tok(corpus.heldout_text, add_special_tokens=False).input_ids
    global_rows = sc.micro_batch_size * sc.grad_accum * dist.world_size
    tokens_per_step = global_rows * sc.seq_len
    measured_steps = max(1, math.ceil(sc.token_budget / tokens_per_step) - sc.warmup_steps)
    segments = math.ceil(measured_steps / sc.eval_every)
    total_steps = sc.warmup_steps + segments * sc.eval_every  # budget rounded up to whole segments
    sampler = BatchSampler(train_ids, sc.seq_len, global_rows, cfg.seed, dist)

    optimizer = torch.optim.AdamW(model.parameters(), lr=sc.lr, betas=(0.9, 0.95), weight_decay=sc.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, sc.lr_warmup_steps, total_steps)
    ddp = DistributedDataParallel(model) if dist.enabled else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def train_step() -> float:
        batch = sampler.next().to(device)
        micro = batch.split(sc.micro_batch_size)
        total = 0.0
        for i, x in enumerate(micro):
            # Gradients all-reduce once per optimizer step, on the last micro-batch.
            sync = nullcontext() if (not dist.enabled or i == len(micro) - 1) else ddp.no_sync()
            with sync, autocast:
                loss = ddp(input_ids=x, labels=x).loss / len(micro)
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), sc.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        return float(total)  # syncs: the step is done when its loss is known

    def evaluate() -> float:
        model.eval()
        with torch.no_grad(), autocast:
            loss, _, _ = heldout_loss(model, heldout_ids[: sc.eval_tokens], sc.seq_len, device)
        model.train()
        return loss

    # FLOPs of one optimizer step on this rank, counted on the bare model (no
    # all-reduce) and outside any window; the gradients it leaves are dropped.
    x = sampler.next()[: sc.micro_batch_size].to(device)
    with autocast:
        micro_flops = count_flops(lambda: model(input_ids=x, labels=x).loss.backward())
    optimizer.zero_grad(set_to_none=True)
    sampler.gen.manual_seed(cfg.seed)  # the count must not shift the data order

    bar = tqdm(total=total_steps, desc=f"{cfg.model.name} × {cfg.technique.name}", unit="step", leave=False,
               disable=not dist.is_main)
    losses = []
    for _ in range(sc.warmup_steps):
        losses.append(dist.mean(train_step()))
        bar.update()

    tokens_per_window = tokens_per_step * sc.eval_every
    step_flops = micro_flops * sc.grad_accum
    trackers = [
        energy_tracker(device, tokens_per_window=tokens_per_window),
        memory_tracker(device),
        ComputeTracker(device, torch.bfloat16 if bf16 else torch.float32, step_flops * sc.eval_every,
                       6 * params["non_embedding"] * tokens_per_window / dist.world_size,
                       "6·N·tokens per rank (forward + backward)"),
    ]
    window = MeasuredWindow(trackers, device)
    step_s, eval_losses = [], []
    for _ in range(segments):
        with window.measure():
            for _ in range(sc.eval_every):
                t0 = time.perf_counter()
                losses.append(train_step())
                synchronize(device)
                step_s.append(time.perf_counter() - t0)
                bar.update()
        eval_losses.append(evaluate())
    bar.close()
    # Ranks' per-step losses are averaged after the window, not inside it.
    losses[sc.warmup_steps :] = [dist.mean(v) for v in losses[sc.warmup_steps :]]

    window_s = sum(window.elapsed_s)
    tt = tokens_per_step * segments * sc.eval_every / window_s
    step_how = "perf_counter around each optimizer step (synchronized)"
    metrics = _merge_ranks(dist.gather(window.metrics()), dist) + [
        from_samples("latency.step_s", step_s, Source.TIMER, step_how),
        make_metric("throughput.train_tokens_per_s", tt, Source.TIMER, [tokens_per_step / s for s in step_s],
                    note=f"{tokens_per_step} tokens/step × steps / window time ({dist.world_size} rank(s)); "
                         "samples: per step"),
        make_metric("throughput.train_tokens_per_s_per_param", tt / params["total"], Source.TIMER,
                    note="TT / total parameters"),
        make_metric("quality.train_loss", sum(losses[-10:]) / len(losses[-10:]), Source.ANALYTIC, losses,
                    note="value: mean of the last 10 steps; samples: every step incl. warm-up (the curve)"),
        make_metric("quality.eval_loss", eval_losses[-1], Source.ANALYTIC, eval_losses,
                    note=f"held-out loss after every {sc.eval_every} measured steps"),
        *perplexity_metrics(model.eval(), heldout_ids[: sc.eval_tokens * 2], sc.seq_len, device),
        make_metric("model.parameters", params["total"], Source.ANALYTIC, note="sum of parameter numel"),
        make_metric("model.active_parameters", active, Source.ANALYTIC, note="per token; MoE: top-k experts"),
    ]
    artifact = save_artifact(model, tok, ctx.run_id) if sc.save_artifact and dist.is_main else None
    return ScenarioResult(metrics, artifact=artifact)
