"""Inference scenario: load through the backend → warm-up → measured repeats of
one batched greedy generation → held-out perplexity, lm-eval tasks, MCR and
the KV cache. A quality step that fails never costs the run its efficiency
figures: they are stored, with the failure as the `quality.error` note."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from effbench.errors import ConfigError
from runners.base import ScenarioResult, ScenarioSpec, at_least, register_scenario

if TYPE_CHECKING:
    from effbench.config.schema import RunConfig
    from runners.base import RunContext, Subject


@dataclass
class InferenceScenario:
    """Greedy generation of exactly output_tokens per sequence (EOS ignored, so every
    repeat does the same work), timed per token; then held-out perplexity."""

    name: str = "inference"
    batch_size: int = 1
    prompt_tokens: int = 128
    output_tokens: int = 64
    warmup: int = 1  # warm-up generate() calls at least; more until their times settle (warmup_max at most)
    warmup_max: int = 8
    repeats: int = 5
    eval_context: int = 256  # tokens per held-out perplexity chunk
    eval_max_tokens: int = 16384  # held-out tokens evaluated (caps quality time)


def validate(cfg: RunConfig) -> None:
    sc = cfg.scenario
    at_least("scenario", sc, ("batch_size", "prompt_tokens", "repeats", "eval_context", "eval_max_tokens"))
    at_least("scenario", sc, ("warmup", "warmup_max"), minimum=0)
    if sc.output_tokens < 2:
        raise ConfigError(f"scenario.output_tokens={sc.output_tokens} must be ≥ 2 (TPOT needs two tokens)")
    if sc.eval_max_tokens < sc.eval_context:
        raise ConfigError(f"scenario.eval_max_tokens={sc.eval_max_tokens} is below scenario.eval_context="
                          f"{sc.eval_context}: held-out perplexity needs at least one context; raise the first or "
                          "lower the second")


def kv_cache_metrics(model, measured: float) -> list:
    from effbench.metrics.catalog import make_metric
    from effbench.metrics.record import Source
    from effbench.models.architectures.base import kv_cache_bytes_per_token

    dtype_bytes = next(model.parameters()).element_size()
    out = [make_metric("memory.kv_cache_bytes_per_token", measured, Source.ANALYTIC,
                       note="cache tensor bytes after prefilling the prompt minus after half of it, per token")]
    analytic = kv_cache_bytes_per_token(model, dtype_bytes)
    if analytic is not None:
        out.append(make_metric("memory.kv_cache_bytes_per_token_analytic", analytic, Source.ANALYTIC,
                               note=f"architecture formula at {dtype_bytes} bytes per element"))
    return out


def run(subject: Subject, ctx: RunContext) -> ScenarioResult:
    import torch
    from tqdm.auto import tqdm

    from effbench.backends import Capability
    from effbench.metrics.bandwidth import bandwidth_metric, decode_memory_metrics, memory_bandwidth
    from effbench.metrics.catalog import make_metric
    from effbench.metrics.compression import compression_metrics
    from effbench.metrics.energy import prepare_energy_tracker
    from effbench.metrics.latency import latency_metrics
    from effbench.metrics.mcr import mcr_metrics
    from effbench.metrics.memory import decode_weight_bytes, measured_kv_bytes_per_token, resident_memory_metrics
    from effbench.metrics.peaks import linear_shapes
    from effbench.metrics.quality import perplexity_metrics
    from effbench.metrics.record import Source
    from effbench.metrics.throughput import throughput_metrics
    from effbench.metrics.trackers import standard_window
    from effbench.metrics.window import warm_up
    from effbench.quality.lm_eval_runner import lm_eval_metrics_or_warning
    from runners.baseline import baseline_quality
    from runners.generation import heldout_ids, load_backend, make_prompts

    sc: InferenceScenario = subject.scenario
    device = ctx.device
    prepare_energy_tracker(device)  # in the background while the model loads; joined before the first window
    bar = tqdm(total=sc.repeats + 2, desc=subject.label, leave=False, unit="step")
    backend = load_backend(subject, device)
    caps = backend.capabilities
    model = backend.model if Capability.MODULE in caps else None
    heldout = heldout_ids(subject, backend.tokenizer)
    input_ids = make_prompts(heldout, sc.batch_size, sc.prompt_tokens, subject.seed).to(device)
    compute_dtype = subject.technique.compute_dtype(subject.technique_config)
    warnings: list[str] = []

    with torch.inference_mode():
        # Counted first: the counted call also pays the first call's lazy initialisation, so the
        # warm-up after it settles a run sooner (it is never timed either way).
        flops = backend.count_generate_flops(input_ids, sc.output_tokens) if Capability.FLOPS in caps else None
        if flops is not None and flops.flops is None:
            warnings.append(f"compute.flops not counted, so no MFU: {flops.note}")
        warmed = warm_up(lambda: backend.generate_untimed(input_ids, sc.output_tokens), min_runs=max(1, sc.warmup),
                         max_runs=max(sc.warmup, sc.warmup_max), device=device) if sc.warmup else None
        if warmed is not None and not warmed.settled:
            warnings.append(warmed.note)
        bar.update()
        params = backend.parameters if Capability.PARAMETERS in caps else None
        tokens_fed = sc.batch_size * (sc.prompt_tokens + sc.output_tokens - 1)  # KV cache: each token once
        window = standard_window(
            device, compute_dtype, tokens_per_window=sc.batch_size * sc.output_tokens, flops=flops,
            flops_analytic=2 * params["active_non_embedding"] * tokens_fed if params else None,
            analytic_rule="2·N·tokens (N = active non-embedding)",
            linear_shapes=linear_shapes(model) if model is not None else None,
            tokens=sc.batch_size * sc.prompt_tokens, cpu_max_ghz=subject.hardware.cpu_max_ghz)
        requests = []
        for _ in range(sc.repeats):
            with window.measure():
                requests.append(backend.generate(input_ids, sc.output_tokens))
            bar.update()
        how = "perf_counter per generated token via a generate() streamer" + (
            f"; {warmed.note}" if warmed is not None else "; no warm-up (scenario.warmup=0)")
        window_metrics = window.metrics()
        metrics = [*window_metrics, *latency_metrics(requests, how),
                   *throughput_metrics(requests, sc.batch_size, sc.prompt_tokens)]
        if model is not None:
            kv_per_token = measured_kv_bytes_per_token(model, input_ids)
            metrics += kv_cache_metrics(model, kv_per_token)
            peak = next(m for m in window_metrics if m.name == "memory.peak_bytes")
            metrics += resident_memory_metrics(model, backend.last_cache, peak.value)
            bandwidth = memory_bandwidth(device)
            metrics += [bandwidth_metric(bandwidth),
                        *decode_memory_metrics(decode_weight_bytes(model), kv_per_token, sc.batch_size,
                                               sc.prompt_tokens, sc.output_tokens, [r.e2e - r.ttft for r in requests],
                                               bandwidth)]
            quality = perplexity_metrics(model, heldout[: sc.eval_max_tokens], sc.eval_context, device)
            metrics += quality
            metrics += lm_eval_metrics_or_warning(model, backend.tokenizer, subject.quality, device, subject.seed,
                                                  warnings)
        if Capability.WEIGHT_BYTES in caps:
            size = backend.weight_bytes()
            ratio = backend.reference_bytes / size
            metrics += compression_metrics(size, backend.reference_bytes, backend.reference_dtype)
            if model is not None:
                base = baseline_quality(subject, device, backend.reference_dtype, heldout)
                metrics += mcr_metrics(base.perplexity, base.note, ratio, quality)
        if params:
            metrics.append(make_metric("model.parameters", params["total"], Source.ANALYTIC,
                                       note="sum of parameter numel"))
        bar.update()
    bar.close()
    backend.close()
    return ScenarioResult(metrics, model_name=backend.model_name, provenance=backend.provenance, warnings=warnings)


SPEC = register_scenario(ScenarioSpec("inference", InferenceScenario, validate, run, axes=("inference",),
                                      uses_backend=True))
