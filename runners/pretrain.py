"""Pretraining scenario: train from scratch for a token budget and measure it.

Steps: build (size preset × architecture technique) → warm-up steps (trained,
not measured) → measured segments of `eval_every` steps, each one window, with
held-out loss between them → final held-out perplexity → checkpoint artifact.
Under torchrun every rank trains its slice of each global batch (DDP); rank 0
gathers the ranks' figures and writes the one record. The measured loop
(warm-up, windows, trackers, step timing, rank merging) is `runners.training`'s,
shared with fine-tuning.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from effbench.artifacts import save_artifact
from effbench.config.schema import PretrainScenario, RunConfig
from effbench.data import load_corpus
from effbench.distributed import Distributed
from effbench.metrics.catalog import make_metric
from effbench.metrics.quality import heldout_loss, perplexity_metrics
from effbench.metrics.record import Source
from effbench.models import load_model, parameter_counts
from effbench.techniques import get_technique
from runners.base import RunContext, ScenarioResult
from runners.training import (StepPlan, StepWork, autocast_for, count_step_flops, make_train_step, measured_training,
                              merge_ranks, use_bf16)

_merge_ranks = merge_ranks  # the name this module had before the loop moved to runners.training
__all__ = ["BatchSampler", "run", "use_bf16"]


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


def run(cfg: RunConfig, ctx: RunContext) -> ScenarioResult:
    sc: PretrainScenario = cfg.scenario
    device, dist = ctx.device, ctx.dist
    technique = get_technique(cfg.technique.method)
    technique.check_device(device)
    bf16 = use_bf16(sc.precision, device)

    loaded = load_model(technique.configure_model(cfg.model, cfg.technique))
    model = technique.apply(loaded.model, cfg.technique, device).train()
    params = parameter_counts(model)
    if dist.is_main:
        tqdm.write(f"{cfg.model.name} × {cfg.technique.name}: {params['total']:,} parameters "
                   f"({params['active']:,} active, {params['non_embedding']:,} non-embedding)")

    corpus = load_corpus(cfg.data.source, cfg.data.path, cfg.data.text_field, cfg.data.heldout_fraction,
                         cfg.data.max_chars)
    tok = loaded.tokenizer
    train_ids = torch.tensor(tok(corpus.train_text, add_special_tokens=False).input_ids)
    heldout_ids = tok(corpus.heldout_text, add_special_tokens=False).input_ids
    global_rows = sc.micro_batch_size * sc.grad_accum * dist.world_size
    tokens_per_step = global_rows * sc.seq_len
    plan = StepPlan.for_budget(math.ceil(sc.token_budget / tokens_per_step), sc.warmup_steps, sc.eval_every)
    sampler = BatchSampler(train_ids, sc.seq_len, global_rows, cfg.seed, dist)

    optimizer = torch.optim.AdamW(model.parameters(), lr=sc.lr, betas=(0.9, 0.95), weight_decay=sc.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, sc.lr_warmup_steps, plan.total_steps)
    autocast = autocast_for(bf16, device)

    def next_batch() -> dict[str, torch.Tensor]:
        x = sampler.next().to(device)
        return {"input_ids": x, "labels": x}

    train_step = make_train_step(model, optimizer, schedule, next_batch, sc.micro_batch_size, sc.max_grad_norm,
                                 autocast, dist)

    def evaluate() -> float:
        model.eval()
        with torch.no_grad(), autocast:
            loss, _, _ = heldout_loss(model, heldout_ids[: sc.eval_tokens], sc.seq_len, device)
        model.train()
        return loss

    x = sampler.next()[: sc.micro_batch_size].to(device)
    step_flops = count_step_flops(model, {"input_ids": x, "labels": x}, sc.grad_accum, autocast, optimizer)
    sampler.gen.manual_seed(cfg.seed)  # the count must not shift the data order
    work = StepWork(tokens=tokens_per_step, samples=global_rows, flops=step_flops,
                    flops_analytic=6 * params["active_non_embedding"] * tokens_per_step / dist.world_size,
                    analytic_rule="6·N·tokens per rank (forward + backward; N = active non-embedding)",
                    compute_dtype=torch.bfloat16 if bf16 else torch.float32)
    trained = measured_training(train_step, evaluate, plan, work, device, dist,
                                f"{cfg.model.name} × {cfg.technique.name}")

    metrics = trained.metrics(params["total"]) + [
        *perplexity_metrics(model.eval(), heldout_ids[: sc.eval_tokens * 2], sc.seq_len, device),
        make_metric("model.parameters", params["total"], Source.ANALYTIC, note="sum of parameter numel"),
        make_metric("model.active_parameters", params["active"], Source.ANALYTIC, note="per token; MoE: top-k experts"),
    ]
    artifact = save_artifact(model, tok, ctx.run_id) if sc.save_artifact and dist.is_main else None
    return ScenarioResult(metrics, artifact=artifact)
