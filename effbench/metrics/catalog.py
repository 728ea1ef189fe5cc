"""Stable metric keys with unit, direction, display name and domain (docs/spec.md §2).

Like lm-eval's `higher_is_better`, direction lives with the metric, so ranks
and gates never guess it. So does its domain, the values it can physically
take: a figure outside it (a utilization above 1 plus tolerance, a negative
energy, a non-positive time or size) is flagged `invalid` with the reason when
it is built. `make_metric` is the one way figures are built.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

from effbench.metrics.record import Domain, Metric, Source

# Stated measurement tolerance of a utilization above 1: the timer and sampling
# error of one window, and the few % by which counted model FLOPs or bytes can
# differ from what the kernels do. Above 1 + this, the figure is a defect.
UTILIZATION_TOLERANCE = 0.05

POSITIVE = Domain(0.0, math.inf, low_open=True)  # times, sizes, rates, counts
NON_NEGATIVE = Domain(0.0, math.inf)  # energies, losses, working memory
FRACTION = Domain(0.0, 1.0)  # shares of a whole
UTILIZATION = Domain(0.0, 1.0, tolerance=UTILIZATION_TOLERANCE)  # MFU, MBU, PCU, AMU
PERPLEXITY = Domain(1.0, math.inf)  # exp of a non-negative loss
ANY = Domain()  # a difference of two clocks: either sign is a result

# memory.runtime_share above this: the process's memory is mostly the runtime
# (interpreter, torch, allocator), so memory.peak_bytes does not tell techniques apart.
RUNTIME_DOMINATED_SHARE = 0.5

# The smallest relative difference that counts in practice, per family (a metric may set
# its own): a difference inside it is a tie however tight the intervals, so deterministic
# figures (perplexity, sizes) that differ in the fourth digit tie instead of being ranked
# 1..n. Why each value: docs/leaderboard.md ("Practical significance").
PRACTICAL_BY_FAMILY = {
    "quality": 0.01,  # perplexity, loss: below 1% is what quantization papers call lossless
    "latency": 0.05,  # run-to-run drift between processes exceeds what one run's repeats show
    "throughput": 0.05,
    "energy": 0.05,  # sampled power and energy models are coarser still
    "memory": 0.02,  # allocator and RSS jitter; counted bytes set their own 1%
    "compute": 0.05,  # utilizations, FLOP rates and probed peaks; counted FLOPs and bytes: 1%
    "compression": 0.01,  # serialized sizes and ratios: exact, but headers and metadata
    "model": 0.01,  # parameter counts
}
PRACTICAL_DEFAULT = 0.01  # metrics outside the catalogue (lm-eval scores)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    unit: str
    higher_is_better: bool | None
    family: str
    display: str
    description: str
    domain: Domain | None = None  # every catalogued metric states one (tests/test_metrics.py checks)
    # How data-parallel ranks' figures combine into the run's (runners.training.merge_ranks):
    # "rank0" (rank 0's view: times, rates, per-rank FLOPs), "sum" (per-device energy), "max"
    # (per-process memory), "harmonic" (1 / Σ 1/x: tokens per joule from each rank's share).
    across_ranks: str = "rank0"
    # Practical-significance threshold, relative (0.05 = 5%); None: the family's PRACTICAL_BY_FAMILY.
    practical: float | None = None

    def __post_init__(self) -> None:
        if self.practical is None:
            object.__setattr__(self, "practical", PRACTICAL_BY_FAMILY[self.family])


_SPECS = [
    # memory
    MetricSpec("memory.peak_bytes", "B", False, "memory", "Peak mem",
               "Peak memory in the window: CUDA max allocated on a GPU, peak process RSS on a CPU.", POSITIVE,
               across_ranks="max"),
    MetricSpec("memory.peak_delta_bytes", "B", False, "memory", "Peak mem Δ",
               "The workload's working memory (KV cache, activations): the window's peak minus the memory "
               "resident just before it (CPU: after returning freed heap pages to the OS, so memory freed "
               "by the warm-up is not already counted as resident).", NON_NEGATIVE, across_ranks="max"),
    MetricSpec("memory.peak_reserved_bytes", "B", False, "memory", "Peak reserved",
               "CUDA caching allocator's peak reserved bytes.", POSITIVE, across_ranks="max"),
    MetricSpec("memory.device_peak_bytes", "B", False, "memory", "Device peak",
               "NVML device-used memory, peak of the samples.", POSITIVE, across_ranks="max"),
    MetricSpec("memory.avg_bytes", "B", False, "memory", "Avg mem",
               "Time-average of sampled memory in use over the window.", POSITIVE, across_ranks="max"),
    MetricSpec("memory.amu", "fraction", False, "memory", "AMU",
               "Average Memory Utilization: time-average used memory / device total.", UTILIZATION),
    MetricSpec("memory.peak_bytes_rank_mean", "B", False, "memory", "Peak mem (rank mean)",
               "Data-parallel runs: mean over ranks of each rank's peak (memory.peak_bytes is the max).", POSITIVE),
    MetricSpec("memory.kv_cache_bytes_per_token", "B/tok", False, "memory", "KV cache/token",
               "Bytes one more token adds to the generation cache, measured from the cache tensors.", NON_NEGATIVE,
               across_ranks="max", practical=0.01),
    MetricSpec("memory.kv_cache_bytes_per_token_analytic", "B/tok", False, "memory", "KV cache/token (analytic)",
               "Bytes one token adds to the cache by the architecture's formula (MLA: the latent).", NON_NEGATIVE,
               across_ranks="max", practical=0.01),
    MetricSpec("memory.model_resident_bytes", "B", False, "memory", "Model mem",
               "Bytes the model's own tensors hold, counted: weights and buffers as stored (quantized: packed "
               "data, scales and zero points; tensor subclasses as their inner tensors), each storage once.",
               POSITIVE, across_ranks="max", practical=0.01),
    MetricSpec("memory.kv_cache_bytes", "B", False, "memory", "KV cache",
               "Bytes of the generation cache at the end of one window's generate, counted from its tensors.",
               NON_NEGATIVE, across_ranks="max", practical=0.01),
    MetricSpec("memory.runtime_share", "fraction", None, "memory", "Runtime share",
               "(peak memory − model resident bytes − KV cache bytes) / peak memory: the share that is the "
               f"runtime's (interpreter, libraries, allocator), not the model's. Above {RUNTIME_DOMINATED_SHARE:g} "
               "the peak is runtime-dominated and does not tell techniques apart.", FRACTION),
    # compute
    MetricSpec("compute.flops", "FLOP", None, "compute", "FLOPs",
               "Model FLOPs of one window counted with torch.utils.flop_counter: attention over the pairs its "
               "mask leaves (causal: half), backward 2× forward without recompute, quantized linear layers "
               "at 2·in·out per token (effbench.metrics.flops).", POSITIVE, practical=0.01),
    MetricSpec("compute.flops_analytic", "FLOP", None, "compute", "FLOPs (analytic)",
               "The textbook count beside the counted one: 2·N·tokens (inference), 6·N·tokens (pretraining), "
               "(4·N + 2·N_trainable)·tokens (fine-tuning); N = active non-embedding parameters.", POSITIVE,
               practical=0.01),
    MetricSpec("compute.achieved_flops_per_s", "FLOP/s", True, "compute", "FLOP/s",
               "Counted FLOPs / window time.", POSITIVE),
    MetricSpec("compute.peak_flops_per_s", "FLOP/s", None, "compute", "Peak FLOP/s",
               "Theoretical device peak at the run's dtype: GPU datasheet, or CPU cores × max clock × FLOP/cycle.",
               POSITIVE),
    MetricSpec("compute.achievable_peak_flops_per_s", "FLOP/s", None, "compute", "Achievable FLOP/s",
               "Best timed rate of torch.nn.functional.linear at the model's shapes and dtype on this device.",
               POSITIVE),
    MetricSpec("compute.mfu", "fraction", True, "compute", "MFU",
               "Model FLOPs utilization: achieved / theoretical peak FLOP/s.", UTILIZATION),
    MetricSpec("compute.mfu_achievable", "fraction", True, "compute", "MFU (achievable)",
               "Achieved / achievable peak FLOP/s (the model's own linear shapes, timed).", UTILIZATION),
    MetricSpec("compute.memory_bandwidth_bytes_per_s", "B/s", None, "compute", "Mem bandwidth",
               "Memory bandwidth: GPU datasheet, or a STREAM-style copy/triad probe on a CPU.", POSITIVE),
    MetricSpec("compute.decode_bytes_moved", "B", None, "compute", "Decode bytes",
               "Bytes the decode steps of one generate() read by the bytes model (weights + KV cache per step): "
               "MBU's numerator.", POSITIVE, practical=0.01),
    MetricSpec("compute.bytes_moved", "B", None, "compute", "Bytes moved",
               "Bytes one window moves by the bytes model: the weights once for prefill plus the decode bytes; "
               "arithmetic intensity = compute.flops / this (the roofline's x).", POSITIVE, practical=0.01),
    MetricSpec("compute.mbu", "fraction", True, "compute", "MBU",
               "Memory-bandwidth utilization: decode bytes read (weights + KV cache) / decode time / bandwidth.",
               UTILIZATION),
    MetricSpec("compute.pcu", "fraction", None, "compute", "PCU",
               "Mean device utilization over the window (NVML utilization.gpu, or process CPU time / cores).",
               UTILIZATION),
    # latency
    MetricSpec("latency.ttft_s", "s", False, "latency", "TTFT", "Time to first token.", POSITIVE),
    MetricSpec("latency.tpot_s", "s", False, "latency", "TPOT", "(e2e − ttft) / (output tokens − 1).", POSITIVE),
    MetricSpec("latency.itl_s", "s", False, "latency", "ITL", "Every gap between consecutive tokens.", NON_NEGATIVE),
    MetricSpec("latency.e2e_s", "s", False, "latency", "AL", "End-to-end request latency (the paper's AL).", POSITIVE),
    MetricSpec("latency.step_s", "s", False, "latency", "AL (step)",
               "Wall time of one optimizer step (all micro-batches), measured window only.", POSITIVE),
    # throughput
    MetricSpec("throughput.prefill_tokens_per_s", "tok/s", True, "throughput", "Prefill tok/s",
               "Prompt tokens (whole batch) / TTFT.", POSITIVE),
    MetricSpec("throughput.decode_tokens_per_s", "tok/s", True, "throughput", "IT",
               "Tokens generated after the first (whole batch) / (e2e − ttft): the paper's IT.", POSITIVE),
    MetricSpec("throughput.train_tokens_per_s", "tok/s", True, "throughput", "TT",
               "Training tokens (all ranks) / measured window time: the paper's TT.", POSITIVE),
    MetricSpec("throughput.train_tokens_per_s_per_param", "tok/s/param", True, "throughput", "TT/param",
               "TT divided by the parameter count, as the paper normalises it.", POSITIVE),
    MetricSpec("throughput.samples_per_s", "samples/s", True, "throughput", "ST",
               "Fine-tuning samples (all ranks) / measured window time: the paper's ST.", POSITIVE),
    MetricSpec("throughput.samples_per_s_per_param", "samples/s/param", True, "throughput", "ST/param",
               "ST divided by the parameter count, as the paper normalises it.", POSITIVE),
    MetricSpec("serve.requests_per_s", "req/s", True, "throughput", "Req/s",
               "Serving: completed requests / (last completion − first arrival) under the run's load profile.",
               POSITIVE),
    MetricSpec("serve.output_tokens_per_s", "tok/s", True, "throughput", "Serve tok/s",
               "Serving: output tokens of all requests / the same duration.", POSITIVE),
    MetricSpec("serve.goodput_requests_per_s", "req/s", True, "throughput", "Goodput",
               "Serving: requests meeting every latency SLO of the config / duration.", NON_NEGATIVE),
    MetricSpec("serve.slo_attainment", "fraction", True, "throughput", "SLO met",
               "Serving: fraction of requests meeting every latency SLO.", FRACTION),
    MetricSpec("serve.mean_batch_size", "req", None, "throughput", "Mean batch",
               "Serving: mean requests per batch the server ran (queueing lets batches grow).", POSITIVE),
    # serving over HTTP (effbench.serving.figures, capacity, server_cost)
    MetricSpec("serve.error_rate", "fraction", False, "throughput", "Errors",
               "Serving: requests without a whole answer (HTTP error, timeout, malformed stream) / requests sent.",
               FRACTION),
    MetricSpec("serve.send_lag_s", "s", False, "latency", "Send lag",
               "Serving over HTTP: actual send − scheduled arrival; its p99 says whether the client kept the schedule.",
               ANY),
    MetricSpec("serve.request_prompt_tokens", "tok", None, "throughput", "Prompt tok",
               "Serving over HTTP: prompt tokens per request as the server counted them (usage.prompt_tokens).",
               POSITIVE),
    MetricSpec("serve.request_output_tokens", "tok", None, "throughput", "Output tok",
               "Serving over HTTP: output tokens per answered request (usage, else the tokenizer).", NON_NEGATIVE),
    MetricSpec("serve.request_prefill_tokens_per_s", "tok/s", True, "throughput", "Prefill tok/s (req)",
               "Serving over HTTP, per request: prompt tokens / TTFT (queueing included: a lower bound).", POSITIVE),
    MetricSpec("serve.request_decode_tokens_per_s", "tok/s", True, "throughput", "Decode tok/s (req)",
               "Serving over HTTP, per request: (output tokens − 1) / (e2e − TTFT).", NON_NEGATIVE),
    MetricSpec("serve.steady_output_tokens_per_s", "tok/s", True, "throughput", "Steady tok/s",
               "Serving: output tokens / time over the steady-state window (batch full, before the drain).", POSITIVE),
    MetricSpec("serve.steady_window_s", "s", None, "throughput", "Steady window",
               "Serving: length of the steady-state window (first full batch to the start of the drain).", POSITIVE),
    MetricSpec("serve.steady_running", "req", None, "throughput", "Steady batch",
               "Serving: time-average of requests between first and last token over the steady-state window.",
               NON_NEGATIVE),
    MetricSpec("serve.load_duration_s", "s", None, "throughput", "Load time",
               "Serving: first scheduled arrival to the last answer or failure, one sample per repeat (the "
               "denominator of the serve.* rates).", POSITIVE),
    MetricSpec("serve.request_arrival_s", "s", None, "throughput", "Arrivals",
               "Serving, per request sent (send order, repeat after repeat): its scheduled arrival, seconds from "
               "the load's start (a Poisson load's seeded schedule; a closed loop's completion times).",
               NON_NEGATIVE),
    # The load curve of a rate sweep (scenario.rates): one sample per swept rate, in the
    # order of serve.sweep_rates (ascending); value = the point at the knee (the lowest rate
    # when no rate meets the target).
    MetricSpec("serve.sweep_rates", "req/s", None, "throughput", "Swept rates",
               "Rate sweep: the offered Poisson rates, ascending; the serve.sweep_* curves follow this order.",
               POSITIVE),
    MetricSpec("serve.sweep_goodput_requests_per_s", "req/s", True, "throughput", "Goodput (sweep)",
               "Rate sweep: goodput at each offered rate (requests meeting every SLO / load duration).",
               NON_NEGATIVE),
    MetricSpec("serve.sweep_slo_attainment", "fraction", True, "throughput", "SLO met (sweep)",
               "Rate sweep: share of requests meeting every SLO at each offered rate (failed ones miss).", FRACTION),
    MetricSpec("serve.sweep_ttft_p90_s", "s", False, "latency", "p90 TTFT (sweep)",
               "Rate sweep: 90th percentile TTFT of the answered requests at each offered rate.", POSITIVE),
    MetricSpec("serve.sweep_error_rate", "fraction", False, "throughput", "Errors (sweep)",
               "Rate sweep: failed / sent requests at each offered rate.", FRACTION),
    MetricSpec("serve.knee_rate", "req/s", True, "throughput", "Knee",
               "Serving: highest swept Poisson rate up to which every swept rate meets the SLO attainment target.",
               NON_NEGATIVE),
    MetricSpec("serve.capacity_rate", "req/s", True, "throughput", "Capacity (rate)",
               "Serving: highest Poisson rate whose SLO attainment meets the target with the stated confidence.",
               NON_NEGATIVE),
    MetricSpec("serve.capacity_concurrency", "req", True, "throughput", "Capacity (clients)",
               "Serving: highest closed-loop concurrency whose SLO attainment meets the target with the stated "
               "confidence.", NON_NEGATIVE),
    MetricSpec("server.rss_peak_bytes", "B", False, "memory", "Server RSS",
               "Serving over HTTP: peak host RSS summed over the server's process tree.", POSITIVE),
    MetricSpec("server.cpu_seconds", "s", False, "compute", "Server CPU",
               "Serving over HTTP: CPU time of the server's process tree over the window.", NON_NEGATIVE),
    MetricSpec("energy.steady_joules_per_token", "J/tok", False, "energy", "Steady J/token",
               "Serving: energy over the steady-state window / output tokens in it.", NON_NEGATIVE),
    # energy
    MetricSpec("energy.joules", "J", False, "energy", "Energy", "Energy over the window.", NON_NEGATIVE,
               across_ranks="sum"),
    MetricSpec("energy.avg_power_w", "W", False, "energy", "AEC",
               "Average power over the window; the paper's AEC is this, in watts.", NON_NEGATIVE, across_ranks="sum"),
    MetricSpec("energy.idle_power_w", "W", None, "energy", "Idle power",
               "Power before the run, by the same method, for dynamic vs gross energy.", NON_NEGATIVE,
               across_ranks="sum"),
    MetricSpec("energy.dynamic_joules", "J", False, "energy", "Dynamic energy",
               "Energy minus idle power × window time.", NON_NEGATIVE, across_ranks="sum"),
    MetricSpec("energy.joules_per_token", "J/tok", False, "energy", "J/token",
               "Window energy / tokens generated in the window.", NON_NEGATIVE, across_ranks="sum"),
    MetricSpec("energy.tokens_per_joule", "tok/J", True, "energy", "tok/J",
               "Tokens generated / window energy.", POSITIVE, across_ranks="harmonic"),
    # compression
    MetricSpec("compression.size_bytes", "B", False, "compression", "Size",
               "Bytes the weights take when serialized (safetensors).", POSITIVE),
    MetricSpec("compression.baseline_size_bytes", "B", None, "compression", "Baseline size",
               "Serialized size of the same model at the baseline precision.", POSITIVE),
    MetricSpec("compression.ratio", "x", True, "compression", "Compression",
               "Baseline size / size.", POSITIVE),
    MetricSpec("compression.mcr", "x", True, "compression", "MCR",
               "Model Compression Rate: ratio × quality ratio to the baseline run (perplexity: baseline ppl / ppl).",
               POSITIVE),
    # quality
    MetricSpec("quality.loss", "nat/token", False, "quality", "Loss", "Mean next-token NLL on held-out text.",
               NON_NEGATIVE),
    MetricSpec("quality.perplexity", "", False, "quality", "Perplexity", "exp(held-out loss).", PERPLEXITY),
    MetricSpec("quality.train_loss", "nat/token", False, "quality", "Train loss",
               "Training loss; samples are every optimizer step in order (the loss curve).", NON_NEGATIVE),
    MetricSpec("quality.eval_loss", "nat/token", False, "quality", "Eval loss",
               "Held-out loss after each measured segment, in order; value = the last.", NON_NEGATIVE),
    # model facts
    MetricSpec("model.parameters", "params", None, "model", "Params", "Parameter count.", POSITIVE),
    MetricSpec("model.active_parameters", "params", None, "model", "Active params",
               "Parameters used per token (MoE: shared + top-k experts).", POSITIVE),
    MetricSpec("model.trainable_parameters", "params", None, "model", "Trainable params",
               "Parameters the optimizer updates (fine-tuning: adapter or unfrozen weights).", NON_NEGATIVE),
    # fine-tuning
    MetricSpec("latency.merge_s", "s", False, "latency", "Merge time",
               "Wall time to merge a trained adapter into the base weights (scenario.merge_adapter).", POSITIVE),
    MetricSpec("quality.base_loss", "nat/token", False, "quality", "Loss before FT",
               "Held-out loss of the fine-tuning set at step 0, before any update (same data as quality.loss).",
               NON_NEGATIVE),
]

CATALOG: dict[str, MetricSpec] = {s.name: s for s in _SPECS}


def domain_of(name: str) -> Domain | None:
    spec = CATALOG.get(name)
    return spec.domain if spec else None


def invalid_reason(name: str, value: float, samples=()) -> str | None:
    """Why a figure of metric `name` is impossible (outside its catalogue domain), or None."""
    domain = domain_of(name)
    if domain is None:
        return None
    figures = np.asarray([value, *samples], dtype=float)
    ok = np.isfinite(figures) & domain.inside(figures)
    if ok.all():
        return None
    spec = CATALOG[name]
    reason = f"{spec.display} ({name}) = {value:g} {spec.unit}".rstrip()
    if ok[0]:
        reason += f", but {int((~ok[1:]).sum())} of {len(samples)} samples (e.g. {figures[1:][~ok[1:]][0]:g})"
    return f"{reason} is outside its domain {domain.describe()}: a measurement defect, not a result"


def make_metric(name: str, value: float, source: Source, samples=(), *, note: str = "") -> Metric:
    """A metric with unit and direction taken from the catalogue. A figure outside
    the metric's domain is kept, flagged `invalid` with the reason by Metric itself
    (never raised: the record is still stored, and the defect shows where it is read)."""
    try:
        spec = CATALOG[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; add it to effbench.metrics.catalog") from None
    return Metric(name, value, spec.unit, source, list(samples), spec.higher_is_better, note)


def from_samples(name: str, samples, source: Source, note: str = "") -> Metric:
    """Headline value = median of per-repeat samples (robust to one noisy repeat)."""
    samples = [float(s) for s in samples]
    return make_metric(name, statistics.median(samples), source, samples, note=note)
