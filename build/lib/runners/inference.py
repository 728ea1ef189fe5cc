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
    warmup: int = 1
    repeats: int = 5
    eval_context: int = 256  # tokens per held-out perplexity chunk
    eval_max_tokens: int = 16384  # held-out tokens evaluated (caps quality time)


def validate(cfg: RunConfig) -> None:
    sc = cfg.scenario
    at_least("scenario", sc, ("batch_size", "prompt_tokens", "repeats", "eval_context", "eval_max_tokens"))
    at_least("scenario", sc, ("warmup",), minimum=0)
    if sc.output_tokens < 2:
        raise ConfigError(f"scenario.output_tokens={sc.output_tokens} must be ≥ 2 (TPOT needs two tokens)")


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
    from effbench.metrics.catalog import make_metric
    from effbench.metrics.compression import compression_metrics
    from effbench.metrics.latency import latency_metrics
    from effbench.metrics.mcr import mcr_metrics
    from effbench.metrics.memory import measured_kv_bytes_per_token
    from effbench.metrics.quality import perplexity_metrics
    from effbench.metrics.record import Source
    from effbench.metrics.throughput import throughput_metrics
    from effbench.metrics.trackers import standard_window
    from effbench.quality.lm_eval_runner import lm_eval_metrics
    from runners.baseline import baseline_quality
    from runners.generation import heldout_ids, load_backend, make_prompts

    sc: InferenceScenario = subject.scenario
    device = ctx.device
    bar = tqdm(total=sc.warmup + sc.repeats + 1, desc=subject.label, leave=False, unit="step")
    backend = load_backend(subject, device)
    caps = backend.capabilities
    heldout = heldout_ids(subject, backend.tokenizer)
    input_ids = make_prompts(heldout, sc.batch_size, sc.prompt_tokens, subject.seed).to(device)
    compute_dtype = subject.technique.compute_dtype(subject.technique_config)

    with torch.inference_mode():
        for _ in range(sc.warmup):
            backend.generate_untimed(input_ids, sc.output_tokens)
            bar.update()
        params = backend.parameters if Capability.PARAMETERS in caps else None
        flops = backend.count_generate_flops(input_ids, sc.output_tokens) if Capability.FLOPS in caps else None
        tokens_fed = sc.batch_size * (sc.prompt_tokens + sc.output_tokens - 1)  # KV cache: each token once
        window = standard_window(
            device, compute_dtype, tokens_per_window=sc.batch_size * sc.output_tokens, flops_per_window=flops,
            flops_analytic=2 * params["active_non_embedding"] * tokens_fed if params else None,
            analytic_rule="2·N·tokens (N = active non-embedding)")
        requests = []
        for _ in range(sc.repeats):
            with window.measure():
                requests.append(backend.generate(input_ids, sc.output_tokens))
            bar.update()
        warnings: list[str] = []
        metrics = [*window.metrics(), *latency_metrics(requests),
                   *throughput_metrics(requests, sc.batch_size, sc.prompt_tokens)]
        if Capability.MODULE in caps:
            model = backend.model
            metrics += kv_cache_metrics(model, measured_kv_bytes_per_token(model, input_ids))
            quality = perplexity_metrics(model, heldout[: sc.eval_max_tokens], sc.eval_context, device)
            metrics += quality
            try:
                metrics += lm_eval_metrics(model, backend.tokenizer, subject.quality, device, subject.seed)
            except Exception as e:  # noqa: BLE001 - the measured figures stay; the record says what is missing
                warnings.append(f"quality failed: lm-eval tasks {list(subject.quality.tasks)}: "
                                f"{type(e).__name__}: {e}")
        if Capability.WEIGHT_BYTES in caps:
            size = backend.weight_bytes()
            ratio = backend.reference_bytes / size
            metrics += compression_metrics(size, backend.reference_bytes, backend.reference_dtype)
            if Capability.MODULE in caps:
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
