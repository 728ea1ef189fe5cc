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

from dataclasses import dataclass
from typing import TYPE_CHECKING

from runners.base import ScenarioResult, ScenarioSpec, at_least, check_training, register_scenario

if TYPE_CHECKING:
    from effbench.config.schema import RunConfig
    from runners.base import RunContext, Subject


@dataclass
class PretrainScenario:
    """Train from scratch for a token budget; the first warmup_steps are not measured."""

    name: str = "pretrain"
    seq_len: int = 128
    micro_batch_size: int = 8
    grad_accum: int = 1
    token_budget: int = 262_144  # training tokens, all ranks, warm-up included (rounded up to whole segments)
    warmup_steps: int = 3  # optimizer steps before the measured window
    eval_every: int = 25  # optimizer steps per measured segment; held-out loss between segments
    eval_tokens: int = 8192
    lr: float = 3e-3
    lr_warmup_steps: int = 10  # of the cosine schedule
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 autocast on a GPU that has it, else fp32) | fp32 | bf16
    save_artifact: bool = True


def validate(cfg: RunConfig) -> None:
    sc = cfg.scenario
    at_least("scenario", sc, ("seq_len", "micro_batch_size", "grad_accum", "token_budget", "eval_every",
                              "eval_tokens"))
    check_training(sc)


def run(subject: Subject, ctx: RunContext) -> ScenarioResult:
    import math

    import torch
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from effbench.artifacts import save_artifact
    from effbench.metrics.catalog import make_metric
    from effbench.metrics.peaks import linear_shapes
    from effbench.metrics.quality import heldout_loss, perplexity_metrics
    from effbench.metrics.record import Source
    from effbench.models import load_model, parameter_counts
    from runners.training import (BatchSampler, StepPlan, StepWork, autocast_for, count_step_flops, flops_warnings,
                                  make_train_step, measured_training, use_bf16)

    sc: PretrainScenario = subject.scenario
    device, dist = ctx.device, ctx.dist
    technique, tcfg = subject.technique, subject.technique_config
    technique.check_device(device)
    bf16 = use_bf16(sc.precision, device)

    loaded = load_model(subject.model)
    model = technique.apply(loaded.model, tcfg, device).train()
    params = parameter_counts(model)
    if dist.is_main:
        tqdm.write(f"{subject.label}: {params['total']:,} parameters "
                   f"({params['active']:,} active, {params['non_embedding']:,} non-embedding)")

    corpus = subject.corpus
    tok = loaded.tokenizer
    train_ids = torch.tensor(tok(corpus.train_text, add_special_tokens=False).input_ids)
    heldout_ids = tok(corpus.heldout_text, add_special_tokens=False).input_ids
    global_rows = sc.micro_batch_size * sc.grad_accum * dist.world_size
    tokens_per_step = global_rows * sc.seq_len
    plan = StepPlan.for_budget(math.ceil(sc.token_budget / tokens_per_step), sc.warmup_steps, sc.eval_every)
    sampler = BatchSampler(train_ids, sc.seq_len, global_rows, subject.seed, dist)

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
    sampler.gen.manual_seed(subject.seed)  # the count must not shift the data order
    work = StepWork(tokens=tokens_per_step, samples=global_rows, flops=step_flops,
                    flops_analytic=6 * params["active_non_embedding"] * tokens_per_step / dist.world_size,
                    analytic_rule="6·N·tokens per rank (forward + backward; N = active non-embedding)",
                    compute_dtype=torch.bfloat16 if bf16 else torch.float32, linear_shapes=linear_shapes(model),
                    micro_tokens=sc.micro_batch_size * sc.seq_len)
    trained = measured_training(train_step, evaluate, plan, work, device, dist, subject.label,
                                subject.hardware.cpu_max_ghz)

    metrics = trained.metrics(params["total"]) + [
        *perplexity_metrics(model.eval(), heldout_ids[: sc.eval_tokens * 2], sc.seq_len, device),
        make_metric("model.parameters", params["total"], Source.ANALYTIC, note="sum of parameter numel"),
        make_metric("model.active_parameters", params["active"], Source.ANALYTIC, note="per token; MoE: top-k experts"),
    ]
    artifact = save_artifact(model, tok, ctx.run_id) if sc.save_artifact and dist.is_main else None
    return ScenarioResult(metrics, artifact=artifact, warnings=flops_warnings(step_flops))


# A precision technique trains the preset's own architecture in that format (the baseline of the axis).
SPEC = register_scenario(ScenarioSpec("pretrain", PretrainScenario, validate, run, axes=("architecture",),
                                      methods=("precision",)))
