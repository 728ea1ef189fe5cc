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
and perplexity → the `quality` group's lm-eval tasks on the trained model (as
the inference scenario runs them: a failing quality step is a warning on the
record, the measured figures stay) → the adapter (or full weights) saved as
the run's artifact.

Rows have a fixed shape (`seq_len`; padding is computed too), so the FLOPs of
one step are counted once, outside the windows. Under torchrun every rank
trains its slice of each global batch (DDP); rank 0 writes the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from runners.base import ScenarioResult, ScenarioSpec, at_least, check_training, register_scenario

if TYPE_CHECKING:
    from effbench.config.schema import RunConfig
    from runners.base import RunContext, Subject


@dataclass
class FinetuneScenario:
    """Fine-tune a base model on instruction/response examples (loss on response
    tokens only) for a sample or step budget; the first warmup_steps are not measured.
    Data: the run's `data` group (pydoc: instructions derived from the bundled docs,
    see effbench.data.sft; local: a .jsonl of examples)."""

    name: str = "finetune"
    seq_len: int = 512  # tokens per row; longer examples are cut (an example whose prompt fills it is dropped)
    packing: bool = False  # true: examples packed into full seq_len rows; false: one example per row, padded
    micro_batch_size: int = 8
    grad_accum: int = 1
    sample_budget: int = 2048  # training rows, all ranks, warm-up included (rounded up to whole segments)
    max_steps: Optional[int] = None  # a step budget instead (optimizer steps incl. warm-up); wins over sample_budget
    warmup_steps: int = 3  # optimizer steps before the measured window
    eval_every: int = 20  # optimizer steps per measured segment; held-out loss between segments
    eval_samples: int = 64  # held-out examples evaluated between segments
    final_eval_samples: int = 512  # held-out examples of the final quality.loss / perplexity
    lr: float = 1e-3  # a technique's own lr (technique.lr) wins
    lr_warmup_steps: int = 5  # of the cosine schedule
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 autocast on a GPU that has it, else fp32) | fp32 | bf16
    instruction_field: str = "instruction"  # data=local: the JSONL fields (Alpaca-style)
    input_field: str = "input"
    output_field: str = "output"
    merge_adapter: bool = False  # merge the adapter into the base weights after training (timed: latency.merge_s)
    save_artifact: bool = True  # the adapter (or the full / merged weights)


def validate(cfg: RunConfig) -> None:
    sc = cfg.scenario
    at_least("scenario", sc, ("seq_len", "micro_batch_size", "grad_accum", "sample_budget", "max_steps",
                              "eval_every", "eval_samples", "final_eval_samples"))
    check_training(sc)


def run(subject: Subject, ctx: RunContext) -> ScenarioResult:
    import math
    import time

    import torch
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from effbench.artifacts import save_artifact
    from effbench.data.sft import Encoded, encode, load_sft, pack
    from effbench.hardware import synchronize
    from effbench.metrics.catalog import make_metric
    from effbench.metrics.peaks import linear_shapes
    from effbench.metrics.record import Metric, Source
    from effbench.models import load_model, parameter_counts
    from effbench.quality.lm_eval_runner import lm_eval_metrics_or_warning
    from effbench.techniques.peft_common import trainable_parameters
    from runners.sft import RowSampler, response_loss, spread
    from runners.training import (StepPlan, StepWork, autocast_for, count_step_flops, flops_warnings, make_train_step,
                                  measured_training, use_bf16)

    sc: FinetuneScenario = subject.scenario
    device, dist = ctx.device, ctx.dist
    technique, tcfg, data_cfg = subject.technique, subject.technique_config, subject.data
    technique.check_device(device)
    bf16 = use_bf16(sc.precision, device)
    autocast = autocast_for(bf16, device)

    loaded = load_model(subject.model, technique.load_dtype(tcfg))
    tok = loaded.tokenizer
    pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
    data = load_sft(data_cfg.source, data_cfg.path, data_cfg.heldout_fraction, sc.instruction_field, sc.input_field,
                    sc.output_field)
    train, dropped = encode(data.train, tok, sc.seq_len)
    heldout, heldout_dropped = encode(data.heldout, tok, sc.seq_len)
    rows = pack(train, sc.seq_len) if sc.packing else train
    sample_is = (f"one packed row of {sc.seq_len} tokens (≈{len(train) / max(1, len(rows)):.1f} examples)"
                 if sc.packing else f"one example (padded to {sc.seq_len} tokens)")
    eval_set, final_set = spread(heldout, sc.eval_samples), spread(heldout, sc.final_eval_samples)
    data_how = (f"{data.describe()}; {dropped} train / {heldout_dropped} held-out examples dropped (prompt ≥ "
                f"seq_len {sc.seq_len})")

    model = technique.apply(loaded.model, tcfg, device).train()
    params = parameter_counts(model)
    trainable = trainable_parameters(model)
    if dist.is_main:
        tqdm.write(f"{loaded.name} × {tcfg.name}: {trainable:,} of {params['total']:,} parameters trained; "
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
    sampler = RowSampler(rows, global_rows, subject.seed, dist, pad_id, sc.seq_len)

    lr = tcfg.lr if getattr(tcfg, "lr", None) is not None else sc.lr
    if technique.optimizer is not None:
        optimizer = technique.optimizer(model, tcfg, lr, sc.weight_decay)
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
                    compute_dtype=torch.bfloat16 if bf16 else torch.float32, linear_shapes=linear_shapes(model),
                    micro_tokens=sc.micro_batch_size * sc.seq_len)
    trained = measured_training(train_step, lambda: evaluate_on(eval_set)[0], plan, work, device, dist,
                                f"{loaded.name} × {tcfg.name}", subject.hardware.cpu_max_ghz)

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
    warnings = flops_warnings(step_flops)
    if subject.quality.tasks and dist.is_main:  # rank 0 writes the record; lm-eval runs on its model alone
        model.eval()
        with autocast:
            metrics += lm_eval_metrics_or_warning(model, tok, subject.quality, device, subject.seed, warnings)
    artifact = None
    if sc.save_artifact and dist.is_main:
        export = technique.export(model, tcfg) if technique.export is not None else model
        artifact = save_artifact(export, tok, ctx.run_id)
    return ScenarioResult(metrics, artifact=artifact, model_name=loaded.name, provenance=loaded.provenance,
                          warnings=warnings)


SPEC = register_scenario(ScenarioSpec("finetune", FinetuneScenario, validate, run, axes=("finetuning",)))
