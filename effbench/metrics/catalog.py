"""Stable metric keys with unit, direction and display name (SPEC §2).

Like lm-eval's `higher_is_better`, direction lives with the metric, so ranks
and gates never guess it. `make_metric` is the one way figures are built.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from effbench.metrics.record import Metric, Source


@dataclass(frozen=True)
class MetricSpec:
    name: str
    unit: str
    higher_is_better: bool | None
    family: str
    display: str
    description: str


_SPECS = [
    # memory
    MetricSpec("memory.peak_bytes", "B", False, "memory", "Peak mem",
               "Peak memory in the window: CUDA max allocated on a GPU, peak process RSS on a CPU."),
    MetricSpec("memory.peak_delta_bytes", "B", False, "memory", "Peak mem Δ",
               "Peak memory in the window minus memory in use at its start."),
    MetricSpec("memory.peak_reserved_bytes", "B", False, "memory", "Peak reserved",
               "CUDA caching allocator's peak reserved bytes."),
    MetricSpec("memory.device_peak_bytes", "B", False, "memory", "Device peak",
               "NVML device-used memory, peak of the samples."),
    MetricSpec("memory.avg_bytes", "B", False, "memory", "Avg mem",
               "Time-average of sampled memory in use over the window."),
    MetricSpec("memory.amu", "fraction", False, "memory", "AMU",
               "Average Memory Utilization: time-average used memory / device total."),
    MetricSpec("memory.peak_bytes_rank_mean", "B", False, "memory", "Peak mem (rank mean)",
               "Data-parallel runs: mean over ranks of each rank's peak (memory.peak_bytes is the max)."),
    MetricSpec("memory.kv_cache_bytes_per_token", "B/tok", False, "memory", "KV cache/token",
               "Bytes one more token adds to the generation cache, measured from the cache tensors."),
    MetricSpec("memory.kv_cache_bytes_per_token_analytic", "B/tok", False, "memory", "KV cache/token (analytic)",
               "Bytes one token adds to the cache by the architecture's formula (MLA: the latent)."),
    # compute
    MetricSpec("compute.flops", "FLOP", None, "compute", "FLOPs",
               "FLOPs of one window counted with torch.utils.flop_counter."),
    MetricSpec("compute.flops_analytic", "FLOP", None, "compute", "FLOPs (analytic)",
               "The textbook count beside the counted one: 2·N·tokens (inference), 6·N·tokens (pretraining), "
               "(4·N + 2·N_trainable)·tokens (fine-tuning); N = active non-embedding parameters."),
    MetricSpec("compute.achieved_flops_per_s", "FLOP/s", True, "compute", "FLOP/s",
               "Counted FLOPs / window time."),
    MetricSpec("compute.peak_flops_per_s", "FLOP/s", None, "compute", "Peak FLOP/s",
               "Theoretical device peak at the run's dtype: GPU datasheet, or CPU cores × max clock × FLOP/cycle."),
    MetricSpec("compute.achievable_peak_flops_per_s", "FLOP/s", None, "compute", "Achievable FLOP/s",
               "Best timed rate of torch.nn.functional.linear at the model's shapes and dtype on this device."),
    MetricSpec("compute.mfu", "fraction", True, "compute", "MFU",
               "Model FLOPs utilization: achieved / theoretical peak FLOP/s."),
    MetricSpec("compute.mfu_achievable", "fraction", True, "compute", "MFU (achievable)",
               "Achieved / achievable peak FLOP/s (the model's own linear shapes, timed)."),
    MetricSpec("compute.memory_bandwidth_bytes_per_s", "B/s", None, "compute", "Mem bandwidth",
               "Memory bandwidth: GPU datasheet, or a STREAM-style copy/triad probe on a CPU."),
    MetricSpec("compute.mbu", "fraction", True, "compute", "MBU",
               "Memory-bandwidth utilization: decode bytes read (weights + KV cache) / decode time / bandwidth."),
    MetricSpec("compute.pcu", "fraction", None, "compute", "PCU",
               "Mean device utilization over the window (NVML utilization.gpu, or process CPU time / cores)."),
    # latency
    MetricSpec("latency.ttft_s", "s", False, "latency", "TTFT", "Time to first token."),
    MetricSpec("latency.tpot_s", "s", False, "latency", "TPOT", "(e2e − ttft) / (output tokens − 1)."),
    MetricSpec("latency.itl_s", "s", False, "latency", "ITL", "Every gap between consecutive tokens."),
    MetricSpec("latency.e2e_s", "s", False, "latency", "AL", "End-to-end request latency (the paper's AL)."),
    MetricSpec("latency.step_s", "s", False, "latency", "AL (step)",
               "Wall time of one optimizer step (all micro-batches), measured window only."),
    # throughput
    MetricSpec("throughput.prefill_tokens_per_s", "tok/s", True, "throughput", "Prefill tok/s",
               "Prompt tokens (whole batch) / TTFT."),
    MetricSpec("throughput.decode_tokens_per_s", "tok/s", True, "throughput", "IT",
               "Tokens generated after the first (whole batch) / (e2e − ttft): the paper's IT."),
    MetricSpec("throughput.train_tokens_per_s", "tok/s", True, "throughput", "TT",
               "Training tokens (all ranks) / measured window time: the paper's TT."),
    MetricSpec("throughput.train_tokens_per_s_per_param", "tok/s/param", True, "throughput", "TT/param",
               "TT divided by the parameter count, as the paper normalises it."),
    MetricSpec("throughput.samples_per_s", "samples/s", True, "throughput", "ST",
               "Fine-tuning samples (all ranks) / measured window time: the paper's ST."),
    MetricSpec("throughput.samples_per_s_per_param", "samples/s/param", True, "throughput", "ST/param",
               "ST divided by the parameter count, as the paper normalises it."),
    MetricSpec("serve.requests_per_s", "req/s", True, "throughput", "Req/s",
               "Serving: completed requests / (last completion − first arrival) under the run's load profile."),
    MetricSpec("serve.output_tokens_per_s", "tok/s", True, "throughput", "Serve tok/s",
               "Serving: output tokens of all requests / the same duration."),
    MetricSpec("serve.goodput_requests_per_s", "req/s", True, "throughput", "Goodput",
               "Serving: requests meeting every latency SLO of the config / duration."),
    MetricSpec("serve.slo_attainment", "fraction", True, "throughput", "SLO met",
               "Serving: fraction of requests meeting every latency SLO."),
    MetricSpec("serve.mean_batch_size", "req", None, "throughput", "Mean batch",
               "Serving: mean requests per batch the server ran (queueing lets batches grow)."),
    # serving over HTTP (effbench.serving.figures, capacity, server_cost)
    MetricSpec("serve.error_rate", "fraction", False, "throughput", "Errors",
               "Serving: requests without a whole answer (HTTP error, timeout, malformed stream) / requests sent."),
    MetricSpec("serve.send_lag_s", "s", False, "latency", "Send lag",
               "Serving over HTTP: actual send − scheduled arrival; its p99 says whether the client kept the schedule."),
    MetricSpec("serve.request_prompt_tokens", "tok", None, "throughput", "Prompt tok",
               "Serving over HTTP: prompt tokens per request as the server counted them (usage.prompt_tokens)."),
    MetricSpec("serve.request_output_tokens", "tok", None, "throughput", "Output tok",
               "Serving over HTTP: output tokens per answered request (usage, else the tokenizer)."),
    MetricSpec("serve.request_prefill_tokens_per_s", "tok/s", True, "throughput", "Prefill tok/s (req)",
               "Serving over HTTP, per request: prompt tokens / TTFT (queueing included: a lower bound)."),
    MetricSpec("serve.request_decode_tokens_per_s", "tok/s", True, "throughput", "Decode tok/s (req)",
               "Serving over HTTP, per request: (output tokens − 1) / (e2e − TTFT)."),
    MetricSpec("serve.steady_output_tokens_per_s", "tok/s", True, "throughput", "Steady tok/s",
               "Serving: output tokens / time over the steady-state window (batch full, before the drain)."),
    MetricSpec("serve.steady_window_s", "s", None, "throughput", "Steady window",
               "Serving: length of the steady-state window (first full batch to the start of the drain)."),
    MetricSpec("serve.steady_running", "req", None, "throughput", "Steady batch",
               "Serving: time-average of requests between first and last token over the steady-state window."),
    MetricSpec("serve.knee_rate", "req/s", True, "throughput", "Knee",
               "Serving: highest swept Poisson rate up to which every swept rate meets the SLO attainment target."),
    MetricSpec("serve.capacity_rate", "req/s", True, "throughput", "Capacity (rate)",
               "Serving: highest Poisson rate whose SLO attainment meets the target with the stated confidence."),
    MetricSpec("serve.capacity_concurrency", "req", True, "throughput", "Capacity (clients)",
               "Serving: highest closed-loop concurrency whose SLO attainment meets the target with the stated "
               "confidence."),
    MetricSpec("server.rss_peak_bytes", "B", False, "memory", "Server RSS",
               "Serving over HTTP: peak host RSS summed over the server's process tree."),
    MetricSpec("server.cpu_seconds", "s", False, "compute", "Server CPU",
               "Serving over HTTP: CPU time of the server's process tree over the window."),
    MetricSpec("energy.steady_joules_per_token", "J/tok", False, "energy", "Steady J/token",
               "Serving: energy over the steady-state window / output tokens in it."),
    # energy
    MetricSpec("energy.joules", "J", False, "energy", "Energy", "Energy over the window."),
    MetricSpec("energy.avg_power_w", "W", False, "energy", "AEC",
               "Average power over the window; the paper's AEC is this, in watts."),
    MetricSpec("energy.idle_power_w", "W", None, "energy", "Idle power",
               "Power before the run, by the same method, for dynamic vs gross energy."),
    MetricSpec("energy.dynamic_joules", "J", False, "energy", "Dynamic energy",
               "Energy minus idle power × window time."),
    MetricSpec("energy.joules_per_token", "J/tok", False, "energy", "J/token",
               "Window energy / tokens generated in the window."),
    MetricSpec("energy.tokens_per_joule", "tok/J", True, "energy", "tok/J",
               "Tokens generated / window energy."),
    # compression
    MetricSpec("compression.size_bytes", "B", False, "compression", "Size",
               "Bytes the weights take when serialized (safetensors)."),
    MetricSpec("compression.baseline_size_bytes", "B", None, "compression", "Baseline size",
               "Serialized size of the same model at the baseline precision."),
    MetricSpec("compression.ratio", "x", True, "compression", "Compression",
               "Baseline size / size."),
    MetricSpec("compression.mcr", "x", True, "compression", "MCR",
               "Model Compression Rate: ratio × quality ratio to the baseline run (perplexity: baseline ppl / ppl)."),
    # quality
    MetricSpec("quality.loss", "nat/token", False, "quality", "Loss", "Mean next-token NLL on held-out text."),
    MetricSpec("quality.perplexity", "", False, "quality", "Perplexity", "exp(held-out loss)."),
    MetricSpec("quality.train_loss", "nat/token", False, "quality", "Train loss",
               "Training loss; samples are every optimizer step in order (the loss curve)."),
    MetricSpec("quality.eval_loss", "nat/token", False, "quality", "Eval loss",
               "Held-out loss after each measured segment, in order; value = the last."),
    # model facts
    MetricSpec("model.parameters", "params", None, "model", "Params", "Parameter count."),
    MetricSpec("model.active_parameters", "params", None, "model", "Active params",
               "Parameters used per token (MoE: shared + top-k experts)."),
    MetricSpec("model.trainable_parameters", "params", None, "model", "Trainable params",
               "Parameters the optimizer updates (fine-tuning: adapter or unfrozen weights)."),
    # fine-tuning
    MetricSpec("latency.merge_s", "s", False, "latency", "Merge time",
               "Wall time to merge a trained adapter into the base weights (scenario.merge_adapter)."),
    MetricSpec("quality.base_loss", "nat/token", False, "quality", "Loss before FT",
               "Held-out loss of the fine-tuning set at step 0, before any update (same data as quality.loss)."),
]

CATALOG: dict[str, MetricSpec] = {s.name: s for s in _SPECS}


def make_metric(name: str, value: float, source: Source, samples=(), *, note: str = "") -> Metric:
    """A metric with unit and direction taken from the catalogue."""
    try:
        spec = CATALOG[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; add it to effbench.metrics.catalog") from None
    return Metric(name, value, spec.unit, source, list(samples), spec.higher_is_better, note)


def from_samples(name: str, samples, source: Source, note: str = "") -> Metric:
    """Headline value = median of per-repeat samples (robust to one noisy repeat)."""
    samples = [float(s) for s in samples]
    return make_metric(name, statistics.median(samples), source, samples, note=note)
