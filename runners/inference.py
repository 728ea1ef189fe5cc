"""Inference scenario: load → apply technique → warm-up → measured repeats →
held-out perplexity. Returns the metrics of one run record."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from effbench.config.schema import InferenceScenario, RunConfig
from effbench.metrics.catalog import make_metric
from effbench.metrics.compression import compression_metrics, serialized_size_at, serialized_size_bytes
from effbench.metrics.compute import ComputeTracker, count_flops
from effbench.metrics.energy import energy_tracker
from effbench.metrics.latency import TokenTimer, latency_metrics
from effbench.metrics.mcr import baseline_quality, mcr_metrics
from effbench.metrics.memory import measured_kv_bytes_per_token, memory_tracker
from effbench.metrics.quality import perplexity_metrics
from effbench.metrics.record import Metric, Source
from effbench.metrics.throughput import throughput_metrics
from effbench.metrics.window import MeasuredWindow
from effbench.models import parameter_counts
from effbench.quality.lm_eval_runner import lm_eval_metrics
from effbench.models.architectures.base import kv_cache_bytes_per_token
from runners.base import RunContext, ScenarioResult
from runners.generation import fixed_length_kwargs, load_for_generation, make_prompts


def baseline_dtype(device: torch.device) -> torch.dtype:
    """SPEC §2: the compression baseline is bf16 on a GPU, fp32 on a CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def kv_cache_metrics(model: torch.nn.Module, measured: float) -> list[Metric]:
    dtype_bytes = next(model.parameters()).element_size()
    out = [make_metric("memory.kv_cache_bytes_per_token", measured, Source.ANALYTIC,
                       note="cache tensor bytes after prefilling the prompt minus after half of it, per token")]
    analytic = kv_cache_bytes_per_token(model, dtype_bytes)
    if analytic is not None:
        out.append(make_metric("memory.kv_cache_bytes_per_token_analytic", analytic, Source.ANALYTIC,
                               note=f"architecture formula at {dtype_bytes} bytes per element"))
    return out


def run(cfg: RunConfig, ctx: RunContext) -> ScenarioResult:
    sc: InferenceScenario = cfg.scenario
    device = ctx.device
    bar = tqdm(total=sc.warmup + sc.repeats + 1, desc=f"{cfg.model.name} × {cfg.technique.name}", leave=False,
               unit="step")

    gen = load_for_generation(cfg, device)
    technique, loaded, heldout_ids = gen.technique, gen.loaded, gen.heldout_ids
    model, tok = loaded.model, loaded.tokenizer
    params = parameter_counts(model)
    base = baseline_dtype(device)
    baseline_size = serialized_size_at(model, base)
    mcr_baseline = baseline_quality(cfg, model, tok, device, base)  # before the technique changes the model
    model = technique.apply(model, cfg.technique, device)
    size = serialized_size_bytes(model)

    input_ids = make_prompts(heldout_ids, sc.batch_size, sc.prompt_tokens, cfg.seed).to(device)
    gen_kwargs = fixed_length_kwargs(tok, sc.output_tokens, input_ids=input_ids,
                                     attention_mask=torch.ones_like(input_ids))

    with torch.inference_mode():
        for _ in range(sc.warmup):
            model.generate(**gen_kwargs)
            bar.update()
        flops = count_flops(lambda: model.generate(**gen_kwargs))
        tokens_fed = sc.batch_size * (sc.prompt_tokens + sc.output_tokens - 1)  # KV cache: each token once
        trackers = [
            energy_tracker(device, tokens_per_window=sc.batch_size * sc.output_tokens),
            memory_tracker(device),
            ComputeTracker(device, technique.compute_dtype(cfg.technique), flops,
                           2 * params["active_non_embedding"] * tokens_fed, "2·N·tokens (N = active non-embedding)"),
        ]
        window = MeasuredWindow(trackers, device)
        timer = TokenTimer(device)
        requests = []
        for _ in range(sc.repeats):
            with window.measure():
                timer.reset()
                model.generate(**gen_kwargs, streamer=timer)
            requests.append(timer.timing())
            bar.update()
        kv_measured = measured_kv_bytes_per_token(model, input_ids)
        quality = perplexity_metrics(model, heldout_ids[: sc.eval_max_tokens], sc.eval_context, device)
        quality += lm_eval_metrics(model, tok, cfg.quality, device, cfg.seed)
        bar.update()
    bar.close()

    return ScenarioResult([
        *window.metrics(),
        *latency_metrics(requests),
        *throughput_metrics(requests, sc.batch_size, sc.prompt_tokens),
        *compression_metrics(size, baseline_size, str(base).removeprefix("torch.")),
        *quality,
        *mcr_metrics(mcr_baseline, baseline_size / size, quality),
        *kv_cache_metrics(model, kv_measured),
        make_metric("model.parameters", params["total"], Source.ANALYTIC, note="sum of parameter numel"),
    ], model_name=loaded.name)
