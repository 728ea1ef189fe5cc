"""Fine-tuning scenario: adapt a base model to instruction/response examples and measure it.

Steps: load the base model (`model=hf` hub id or directory, or `model=artifact
model.run_id=…` a pretraining checkpoint) → the fine-tuning technique makes it
trainable (a peft adapter, partial freezing, or full) → supervised examples
(`effbench.data.sft`: derived from the bundled docs, or a local JSONL),
prompt tokens labelled -100 so the loss is on response tokens only, one
example per row padded to `seq_len` or packed → held-out loss at step 0 →
the shared measured loop of `runners.training` (warm-up steps unmeasured,
segments of `eval_every` steps each one window, held-out loss between them)
for a sample or step budget → optional adapter merge (timed) → held-out loss
and perplexity → the adapter (or full weights) saved as the run's artifact.

Rows have a fixed shape (`seq_len`; padding is computed too), so the FLOPs of
one step are counted once, outside the windows. Under torchrun every rank
trains its slice of each global batch (DDP); rank 0 writes the record.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from effbench.artifacts import save_artifact
from effbench.config.schema import FinetuneScenario, RunConfig
from effbench.data.sft import IGNORE_INDEX, Encoded, encode, load_sft, pack
from effbench.distributed import Distributed
from effbench.hardware import synchronize
from effbench.metrics.catalog import make_metric
from effbench.metrics.record import Metric, Source
from effbench.models import load_model, parameter_counts
from effbench.techniques import get_technique
from effbench.techniques.peft_common import AXIS, trainable_parameters
from runners.base import RunContext, ScenarioResult
from runners.training import (StepPlan, StepWork, autocast_for, count_step_flops, make_train_step, measured_training,
                              use_bf16)


def collate(rows: list[Encoded], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded batch: pad tokens have attention 0 and label -100."""
    length = length or max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class RowSampler:
    """Global batches of rows: a seeded shuffle per epoch, identical on every
    rank; each rank takes its contiguous slice of the global batch."""

    def __init__(self, rows: list[Encoded], global_rows: int, seed: int, dist: Distributed, pad_id: int,
                 seq_len: int):
        if len(rows) < global_rows:
            raise ValueError(f"{len(rows)} training rows, fewer than one global batch of {global_rows} "
                             "(lower scenario.micro_batch_size, or more data)")
        self.rows, self.global_rows, self.seed, self.dist = rows, global_rows, seed, dist
        self.pad_id, self.seq_len = pad_id, seq_len
        self.reset()

    def reset(self) -> None:
        self.gen = torch.Generator().manual_seed(self.seed)
        self.order: list[int] = []
        self.epochs = 0

    def next(self) -> dict[str, torch.Tensor]:
        if len(self.order) < self.global_rows:  # a new epoch; the incomplete tail of the last is dropped
            self.order = torch.randperm(len(self.rows), generator=self.gen).tolist()
            self.epochs += 1
        batch, self.order = self.order[: self.global_rows], self.order[self.global_rows :]
        per_rank = self.global_rows // self.dist.world_size
        mine = batch[self.dist.rank * per_rank : (self.dist.rank + 1) * per_rank]
        return collate([self.rows[i] for i in mine], self.pad_id, self.seq_len)


def spread(items: list, n: int) -> list:
    """n evenly spaced items (all when n ≥ len): a deterministic subset over every document."""
    return items if n >= len(items) else [items[i * len(items) // n] for i in range(n)]


@torch.no_grad()
def response_loss(model: torch.nn.Module, examples: list[Encoded], pad_id: int, device: torch.device,
                  batch_size: int = 16) -> tuple[float, list[float], int]:
    """Mean NLL per response token over the examples (prompt tokens are not
    scored). Returns (token-weighted mean, per-example means, scored tokens)."""
    total, count, per_example = 0.0, 0, []
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)
        scored = (labels != IGNORE_INDEX).sum(dim=1)
        sums = nll.sum(dim=1)
        per_example += (sums / scored.clamp(min=1)).tolist()
        total += float(sums.sum())
        count += int(scored.sum())
    if count == 0:
        raise ValueError("no held-out response tokens to score")
    return total / count, per_example, count


def run(cfg: RunConfig, ctx: RunContext) -> ScenarioResult:
    sc: FinetuneScenario = cfg.scenario
    device, dist = ctx.device, ctx.dist
    technique = get_technique(cfg.technique.method)
    if technique.axis != AXIS:
        raise ValueError(f"scenario=finetune needs a fine-tuning technique (lora, rslora, dora, pissa, loraplus, "
                         f"freeze, full); technique.method={cfg.technique.method!r} is on the {technique.axis} axis")
    technique.check_device(device)
    for key in ("seq_len", "micro_batch_size", "grad_accum", "eval_every", "eval_samples", "final_eval_samples"):
        if getattr(sc, key) < 1:
            raise ValueError(f"scenario.{key}={getattr(sc, key)} must be ≥ 1")
    bf16 = use_bf16(sc.precision, device)
    autocast = autocast_for(bf16, device)

    loaded = load_model(technique.configure_model(cfg.model, cfg.technique), technique.load_dtype(cfg.technique))
    tok = loaded.tokenizer
    pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
    data = load_sft(cfg.data.source, cfg.data.path, cfg.data.heldout_fraction, sc.instruction_field, sc.input_field,
                    sc.output_field)
    train, dropped = encode(data.train, tok, sc.seq_len)
    heldout, heldout_dropped = encode(data.heldout, tok, sc.seq_len)
    rows = pack(train, sc.seq_len) if sc.packing else train
    sample_is = (f"one packed row of {sc.seq_len} tokens (≈{len(train) / max(1, len(rows)):.1f} examples)"
                 if sc.packing else f"one example (padded to {sc.seq_len} tokens)")
    eval_set, final_set = spread(heldout, sc.eval_samples), spread(heldout, sc.final_eval_samples)
    data_how = (f"{data.describe()}; {dropped} train / {heldout_dropped} held-out examples dropped (prompt ≥ "
                f"seq_len {sc.seq_len})")

    model = technique.apply(loaded.model, cfg.technique, device).train()
    params = parameter_counts(model)
    trainable = trainable_parameters(model)
    if dist.is_main:
        tqdm.write(f"{loaded.name} × {cfg.technique.name}: {trainable:,} of {params['total']:,} parameters trained; "
                   f"{data_how}")

    def evaluate_on(examples: list[Encoded]) -> tuple[float, list[float], int]:
        was_training = model.training
        model.eval()
        with autocast:
            out = response_loss(model, examples, pad_id, device)
        model.train(was_training)
        return out

    base_loss, _, _ = evaluate_on(final_set)  # step 0: every technique leaves the outputs unchanged here

    global_rows = sc.micro_batch_size * sc.grad_accum * dist.world_size
    budget = sc.max_steps if sc.max_steps is not None else math.ceil(sc.sample_budget / global_rows)
    plan = StepPlan.for_budget(budget, sc.warmup_steps, sc.eval_every)
    sampler = RowSampler(rows, global_rows, cfg.seed, dist, pad_id, sc.seq_len)

    lr = cfg.technique.lr if getattr(cfg.technique, "lr", None) is not None else sc.lr
    if technique.optimizer is not None:
        optimizer = technique.optimizer(model, cfg.technique, lr, sc.weight_decay)
    else:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                      weight_decay=sc.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, sc.lr_warmup_steps, plan.total_steps)

    def next_batch() -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in sampler.next().items()}

    train_step = make_train_step(model, optimizer, schedule, next_batch, sc.micro_batch_size, sc.max_grad_norm,
                                 autocast, dist)
    micro = {k: v[: sc.micro_batch_size] for k, v in next_batch().items()}
    step_flops = count_step_flops(model, micro, sc.grad_accum, autocast, optimizer)
    sampler.reset()  # the count must not shift the data order
    emb = model.get_input_embeddings().weight
    trainable_non_emb = trainable - (emb.numel() if emb.requires_grad else 0)
    tokens_per_step = global_rows * sc.seq_len
    work = StepWork(tokens=tokens_per_step, samples=global_rows, flops=step_flops,
                    flops_analytic=(4 * params["active_non_embedding"] + 2 * trainable_non_emb) * tokens_per_step
                    / dist.world_size,
                    analytic_rule="(4·N + 2·N_trainable)·tokens per rank: forward 2·N, activation gradients 2·N "
                                  "(an upper bound when the lowest layers are frozen), weight gradients 2·N_trainable "
                                  "(full fine-tuning: 6·N)",
                    compute_dtype=torch.bfloat16 if bf16 else torch.float32)
    trained = measured_training(train_step, lambda: evaluate_on(eval_set)[0], plan, work, device, dist,
                                f"{loaded.name} × {cfg.technique.name}")

    extra: list[Metric] = []
    if sc.merge_adapter and hasattr(model, "merge_and_unload"):
        synchronize(device)
        t0 = time.perf_counter()
        model = model.merge_and_unload()
        synchronize(device)
        extra.append(make_metric("latency.merge_s", time.perf_counter() - t0, Source.TIMER,
                                 note="peft merge_and_unload (synchronized)"))
    loss, per_example, scored = evaluate_on(final_set)
    how = f"response tokens of {len(final_set)} held-out examples ({scored} tokens); {data_how}"
    metrics = trained.metrics(params["total"], samples=sample_is) + [
        make_metric("quality.loss", loss, Source.ANALYTIC, per_example,
                    note=f"{how}; value: token mean, samples: per example"),
        make_metric("quality.perplexity", math.exp(loss), Source.ANALYTIC, note=how),
        make_metric("quality.base_loss", base_loss, Source.ANALYTIC, note=f"step 0; {how}"),
        make_metric("model.parameters", params["total"], Source.ANALYTIC,
                    note="sum of parameter numel (4-bit weights unpacked): base + adapter, before any merge"),
        make_metric("model.trainable_parameters", trainable, Source.ANALYTIC,
                    note="numel of parameters with requires_grad"),
        *extra,
    ]
    artifact = None
    if sc.save_artifact and dist.is_main:
        export = technique.export(model, cfg.technique) if technique.export is not None else model
        artifact = save_artifact(export, tok, ctx.run_id)
    return ScenarioResult(metrics, artifact=artifact, model_name=loaded.name)
