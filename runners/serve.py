"""Serving scenario: load → apply technique → warm-up → `repeats` runs of the
load profile against a batching server, each run one measured window."""

from __future__ import annotations

import dataclasses

import torch
from tqdm.auto import tqdm

from effbench.config.schema import RunConfig, ServeScenario
from effbench.metrics.catalog import make_metric
from effbench.metrics.compute import ComputeTracker
from effbench.metrics.energy import energy_tracker
from effbench.metrics.latency import TokenTimer, latency_metrics
from effbench.metrics.memory import memory_tracker
from effbench.metrics.record import Source
from effbench.metrics.serving import serving_metrics
from effbench.metrics.window import MeasuredWindow
from effbench.models import parameter_counts
from effbench.serving.harness import LoadResult, drive
from effbench.serving.load import batch_cap, make_load
from runners.base import RunContext, ScenarioResult
from runners.generation import fixed_length_kwargs, load_for_generation, make_prompts


class GenerateServer:
    """The system under test: one batched greedy generate() per batch of waiting
    requests (static batching: a batch runs to its end before the next forms)."""

    def __init__(self, model, prompts: torch.Tensor, gen_kwargs: dict, device: torch.device):
        self.model, self.prompts, self.gen_kwargs = model, prompts, gen_kwargs
        self.timer = TokenTimer(device)

    def __call__(self, request_ids: list[int]) -> list[float]:
        input_ids = self.prompts[request_ids]
        self.timer.reset()
        self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=self.timer,
                            **self.gen_kwargs)
        return self.timer.token_times


def run(cfg: RunConfig, ctx: RunContext) -> ScenarioResult:
    sc: ServeScenario = cfg.scenario
    device = ctx.device
    gen = load_for_generation(cfg, device)
    model = gen.technique.apply(gen.loaded.model, cfg.technique, device)
    profile = sc.profile.value
    max_batch = batch_cap(profile, sc.batch_size, sc.max_batch_size)
    prompts = make_prompts(gen.heldout_ids, sc.num_requests, sc.prompt_tokens, cfg.seed).to(device)
    server = GenerateServer(model, prompts, fixed_length_kwargs(
        gen.loaded.tokenizer, sc.output_tokens, cache_implementation=sc.cache_implementation.value), device)

    window = MeasuredWindow([
        energy_tracker(device, tokens_per_window=sc.num_requests * sc.output_tokens),
        memory_tracker(device),
        ComputeTracker(device, gen.technique.compute_dtype(cfg.technique)),
    ], device)
    runs: list[LoadResult] = []
    with torch.inference_mode():
        for _ in range(sc.warmup):
            server(list(range(min(max_batch, sc.num_requests))))
        for _ in tqdm(range(sc.repeats), desc=f"{cfg.model.name} × {cfg.technique.name} ({profile})", leave=False,
                      unit="load"):
            load = make_load(profile, num_requests=sc.num_requests, batch_size=sc.batch_size,
                             concurrency=sc.concurrency, rate=sc.rate, seed=cfg.seed)  # same arrivals each repeat
            with window.measure():
                runs.append(drive(load, server, max_batch))

    return ScenarioResult([
        *window.metrics(),
        *latency_metrics([r for run in runs for r in run.requests],
                         how=f"per request, {profile} load: token times via a generate() streamer; TTFT and e2e "
                             "from the request's arrival (queueing included)"),
        *serving_metrics(runs, dataclasses.asdict(sc.slo), profile),
        make_metric("model.parameters", parameter_counts(model)["total"], Source.ANALYTIC,
                    note="sum of parameter numel"),
    ], model_name=gen.loaded.name)
