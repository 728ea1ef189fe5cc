"""The measured training loop, shared by pretraining and fine-tuning.

A runner builds its model, data and optimizer, then hands this module:

* `make_train_step(...)` — one optimizer step over a global batch: the rank's
  rows split into micro-batches, gradients all-reduced once (DDP `no_sync` on
  all but the last micro-batch), clipped, optimizer and schedule stepped. The
  batch is a dict of tensors passed to `model(**micro_batch)`; the runner only
  says how to draw it (`next_batch`).
* `count_step_flops(...)` — FLOPs of one optimizer step, counted once on the
  bare model and outside every window.
* `measured_training(train_step, evaluate, plan, work, ...)` — warm-up steps
  (trained, not measured), then `plan.segments` segments of `plan.eval_every`
  steps, each one `MeasuredWindow` under the energy, memory and compute
  trackers, every step timed (synchronized), the held-out `evaluate()` between
  segments (outside the windows). It returns a `TrainingRun`, whose
  `metrics()` are the figures every training scenario reports, merged across
  data-parallel ranks (energy summed, memory max and mean).

Runners add only what is theirs (pretraining: perplexity and active
parameters; fine-tuning: samples/s, trainable parameters, merge time).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from effbench.distributed import Distributed
from effbench.hardware import synchronize
from effbench.metrics.catalog import CATALOG, from_samples, make_metric
from effbench.metrics.energy import prepare_energy_tracker
from effbench.metrics.flops import FlopCount, count_flops
from effbench.metrics.record import Metric, Source
from effbench.metrics.trackers import standard_window

Batch = dict[str, torch.Tensor]


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


def use_bf16(precision: str, device: torch.device) -> bool:
    """scenario.precision (checked at config time: runners.base.check_training) on this device."""
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def autocast_for(bf16: bool, device: torch.device) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps, and how they are measured."""

    warmup_steps: int  # trained, not measured
    segments: int  # measured windows, with a held-out evaluation after each
    eval_every: int  # optimizer steps per segment

    @classmethod
    def for_budget(cls, budget_steps: int, warmup_steps: int, eval_every: int) -> StepPlan:
        """`budget_steps` counts warm-up; the measured part is rounded up to whole segments (at least one step)."""
        measured = max(1, budget_steps - warmup_steps)
        return cls(warmup_steps, math.ceil(measured / eval_every), eval_every)

    @property
    def measured_steps(self) -> int:
        return self.segments * self.eval_every

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.measured_steps


@dataclass(frozen=True)
class StepWork:
    """What one optimizer step does, for the throughput, energy and compute figures."""

    tokens: int  # all ranks
    samples: int  # all ranks
    flops: FlopCount  # counted, this rank (flops None: not countable, the note says why)
    flops_analytic: float  # this rank, by `analytic_rule`
    analytic_rule: str
    compute_dtype: torch.dtype  # for the device's peak FLOP/s (MFU)
    linear_shapes: list[tuple[int, int]]  # the model's (in, out) linear shapes, for the achievable-peak probe
    micro_tokens: int  # tokens of one micro-batch on this rank


def make_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule, next_batch: Callable[[], Batch],
                    micro_batch_size: int, max_grad_norm: float, autocast: AbstractContextManager,
                    dist: Distributed) -> Callable[[], float]:
    """One optimizer step per call; returns this rank's mean micro-batch loss."""
    ddp = DistributedDataParallel(model) if dist.enabled else model

    def train_step() -> float:
        batch = next_batch()
        micro = [dict(zip(batch, parts)) for parts in zip(*(t.split(micro_batch_size) for t in batch.values()))]
        total = 0.0
        for i, x in enumerate(micro):
            # Gradients all-reduce once per optimizer step, on the last micro-batch.
            sync = nullcontext() if (not dist.enabled or i == len(micro) - 1) else ddp.no_sync()
            with sync, autocast:
                loss = ddp(**x).loss / len(micro)
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        return float(total)  # syncs: the step is done when its loss is known

    return train_step


def flops_warnings(count: FlopCount) -> list[str]:
    """What a record says when FLOPs could not be counted (and so MFU is missing)."""
    return [] if count.flops is not None else [f"compute.flops not counted, so no MFU: {count.note}"]


def count_step_flops(model: torch.nn.Module, micro_batch: Batch, grad_accum: int, autocast: AbstractContextManager,
                     optimizer: torch.optim.Optimizer) -> FlopCount:
    """FLOPs of one optimizer step on this rank: forward + backward of one
    micro-batch × micro-batches per step, on the bare model (no all-reduce),
    outside any window. The gradients it leaves are dropped."""
    with autocast:
        micro = count_flops(lambda: model(**micro_batch).loss.backward())
    optimizer.zero_grad(set_to_none=True)
    return micro.times(grad_accum)


def merge_ranks(per_rank: list[list[Metric]], dist: Distributed) -> list[Metric]:
    """Rank 0's view, with each metric combined across ranks by its catalogue rule (MetricSpec.across_ranks:
    energy summed over devices, memory as the max over processes, tokens per joule harmonically); the
    peak memory also as the mean over ranks."""
    if not dist.enabled:
        return per_rank[0]
    combine = {"sum": sum, "max": max, "harmonic": lambda xs: 1 / sum(1 / x for x in xs)}
    by_rank = [{m.name: m for m in metrics} for metrics in per_rank]
    merged = []
    for name, m in by_rank[0].items():
        rule = CATALOG[name].across_ranks if name in CATALOG else "rank0"
        if rule == "rank0":
            merged.append(m)
            continue
        samples_by_rank = list(zip(*(r[name].samples for r in by_rank)))
        merged.append(from_samples(name, [combine[rule](s) for s in samples_by_rank], m.source,
                                   f"{m.note}; {rule} over {dist.world_size} ranks"))
        if name == "memory.peak_bytes":
            means = [sum(s) / len(s) for s in samples_by_rank]
            merged.append(from_samples("memory.peak_bytes_rank_mean", means, m.source, m.note))
    return merged


@dataclass
class TrainingRun:
    plan: StepPlan
    work: StepWork
    world_size: int
    losses: list[float]  # every step in order, warm-up included, mean over ranks: the curve
    step_s: list[float]  # measured steps only
    eval_losses: list[float]  # after each segment
    window_s: float  # sum of the windows
    window_metrics: list[Metric]  # the trackers', merged over ranks

    def metrics(self, total_parameters: int, samples: str | None = None) -> list[Metric]:
        """The figures every training scenario reports; `samples` (what one
        sample is) adds ST, fine-tuning's samples/s, next to TT."""
        w, steps = self.work, self.plan.measured_steps
        tt = w.tokens * steps / self.window_s
        out = [
            *self.window_metrics,
            from_samples("latency.step_s", self.step_s, Source.TIMER,
                         "perf_counter around each optimizer step (synchronized)"),
            make_metric("throughput.train_tokens_per_s", tt, Source.TIMER, [w.tokens / s for s in self.step_s],
                        note=f"{w.tokens} tokens/step × steps / window time ({self.world_size} rank(s)); "
                             "samples: per step"),
            make_metric("throughput.train_tokens_per_s_per_param", tt / total_parameters, Source.TIMER,
                        note="TT / total parameters"),
        ]
        if samples is not None:
            st = w.samples * steps / self.window_s
            out += [
                make_metric("throughput.samples_per_s", st, Source.TIMER, [w.samples / s for s in self.step_s],
                            note=f"{w.samples} samples/step × steps / window time ({self.world_size} rank(s)); "
                                 f"a sample: {samples}; samples: per step"),
                make_metric("throughput.samples_per_s_per_param", st / total_parameters, Source.TIMER,
                            note="ST / total parameters"),
            ]
        tail = self.losses[-10:]
        out += [
            make_metric("quality.train_loss", sum(tail) / len(tail), Source.ANALYTIC, self.losses,
                        note="value: mean of the last 10 steps; samples: every step incl. warm-up (the curve)"),
            make_metric("quality.eval_loss", self.eval_losses[-1], Source.ANALYTIC, self.eval_losses,
                        note=f"held-out loss after every {self.plan.eval_every} measured steps"),
        ]
        return out


def measured_training(train_step: Callable[[], float], evaluate: Callable[[], float], plan: StepPlan, work: StepWork,
                      device: torch.device, dist: Distributed, desc: str, cpu_max_ghz: float | None = None
                      ) -> TrainingRun:
    """Warm-up, then measured segments with a held-out evaluation after each (module docstring)."""
    prepare_energy_tracker(device)  # in the background during the warm-up; joined before the first window
    bar = tqdm(total=plan.total_steps, desc=desc, unit="step", leave=False, disable=None if dist.is_main else True)
    losses = []
    for _ in range(plan.warmup_steps):
        losses.append(dist.mean(train_step()))
        bar.update()

    window = standard_window(device, work.compute_dtype, tokens_per_window=work.tokens * plan.eval_every,
                             flops=work.flops.times(plan.eval_every),
                             flops_analytic=work.flops_analytic * plan.eval_every, analytic_rule=work.analytic_rule,
                             linear_shapes=work.linear_shapes, tokens=work.micro_tokens, cpu_max_ghz=cpu_max_ghz)
    step_s, eval_losses = [], []
    for _ in range(plan.segments):
        with window.measure():
            for _ in range(plan.eval_every):
                t0 = time.perf_counter()
                losses.append(train_step())
                synchronize(device)
                step_s.append(time.perf_counter() - t0)
                bar.update()
        eval_losses.append(evaluate())
    bar.close()
    # Ranks' per-step losses are averaged after the window, not inside it.
    losses[plan.warmup_steps :] = [dist.mean(v) for v in losses[plan.warmup_steps :]]
    return TrainingRun(plan, work, dist.world_size, losses, step_s, eval_losses, sum(window.elapsed_s),
                       merge_ranks(dist.gather(window.metrics()), dist))
