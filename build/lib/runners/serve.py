"""Serving scenario: requests arrive by a load profile and are served first come,
first served, up to max_batch_size at a time, each batch one greedy generation
through the backend (static batching: a batch runs to its end before the next
forms); every request is timed from its arrival. `repeats` runs of the load,
each one measured window."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from effbench.errors import ConfigError
from runners.base import ScenarioResult, ScenarioSpec, at_least, register_scenario

if TYPE_CHECKING:
    from effbench.config.schema import RunConfig
    from runners.base import RunContext, Subject


class LoadProfile(str, enum.Enum):
    batch = "batch"  # batch_size requests at once, the next batch when it is done
    concurrency = "concurrency"  # closed loop: each of `concurrency` clients resends when answered
    poisson = "poisson"  # open loop: arrivals at rate λ with seeded exponential gaps


class CacheImplementation(str, enum.Enum):
    dynamic = "dynamic"  # transformers' default: the cache grows with each token
    static = "static"  # preallocated to prompt + output length (pays off with torch.compile / CUDA graphs)


@dataclass
class SloConfig:
    """Latency bounds a request must meet to count toward goodput; null = no bound."""

    ttft_s: Optional[float] = None
    tpot_s: Optional[float] = None
    e2e_s: Optional[float] = None


@dataclass
class ServeScenario:
    """Requests arriving under a load profile, served first come first served in
    batches of up to max_batch_size; every request timed from its arrival."""

    name: str = "serve"
    profile: LoadProfile = LoadProfile.poisson
    num_requests: int = 32  # per repeat
    batch_size: int = 4  # profile=batch
    concurrency: int = 4  # profile=concurrency
    rate: float = 4.0  # profile=poisson: λ, requests per second
    max_batch_size: int = 8  # largest batch the server forms from waiting requests (profile=batch: batch_size)
    prompt_tokens: int = 64
    output_tokens: int = 32
    cache_implementation: CacheImplementation = CacheImplementation.dynamic
    warmup: int = 1  # generate() calls at max batch before the first repeat
    repeats: int = 3  # whole load runs; each gives one sample of the serve.* rates
    slo: SloConfig = field(default_factory=SloConfig)


def validate(cfg: RunConfig) -> None:
    sc = cfg.scenario
    at_least("scenario", sc, ("num_requests", "batch_size", "concurrency", "max_batch_size", "prompt_tokens",
                              "repeats"))
    at_least("scenario", sc, ("warmup",), minimum=0)
    if sc.output_tokens < 2:
        raise ConfigError(f"scenario.output_tokens={sc.output_tokens} must be ≥ 2 (TPOT needs two tokens)")
    if not sc.rate > 0:
        raise ConfigError(f"scenario.rate={sc.rate} must be > 0 requests per second")
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        bound = getattr(sc.slo, key)
        if bound is not None and not bound > 0:
            raise ConfigError(f"scenario.slo.{key}={bound} must be > 0 seconds, or null for no bound")


def run(subject: Subject, ctx: RunContext) -> ScenarioResult:
    import dataclasses

    import torch
    from tqdm.auto import tqdm

    from effbench.backends import Capability
    from effbench.metrics.catalog import make_metric
    from effbench.metrics.latency import latency_metrics
    from effbench.metrics.record import Source
    from effbench.metrics.serving import serving_metrics
    from effbench.metrics.trackers import standard_window
    from effbench.serving.harness import LoadResult, drive
    from effbench.serving.load import batch_cap, make_load
    from runners.generation import heldout_ids, load_backend, make_prompts

    sc: ServeScenario = subject.scenario
    device = ctx.device
    backend = load_backend(subject, device, cache_implementation=sc.cache_implementation.value)
    profile = sc.profile.value
    max_batch = batch_cap(profile, sc.batch_size, sc.max_batch_size)
    prompts = make_prompts(heldout_ids(subject, backend.tokenizer), sc.num_requests, sc.prompt_tokens,
                           subject.seed).to(device)

    def serve_batch(request_ids: list[int]) -> list[float]:
        """The system under test: one batched greedy generation per batch of waiting requests."""
        return backend.generate(prompts[request_ids], sc.output_tokens).token_times

    window = standard_window(device, subject.technique.compute_dtype(subject.technique_config),
                             tokens_per_window=sc.num_requests * sc.output_tokens)
    runs: list[LoadResult] = []
    with torch.inference_mode():
        for _ in range(sc.warmup):
            backend.generate_untimed(prompts[: min(max_batch, sc.num_requests)], sc.output_tokens)
        for _ in tqdm(range(sc.repeats), desc=f"{subject.label} ({profile})", leave=False, unit="load"):
            load = make_load(profile, num_requests=sc.num_requests, batch_size=sc.batch_size,
                             concurrency=sc.concurrency, rate=sc.rate, seed=subject.seed)  # same arrivals each repeat
            with window.measure():
                runs.append(drive(load, serve_batch, max_batch))

    metrics = [
        *window.metrics(),
        *latency_metrics([r for run in runs for r in run.requests],
                         how=f"per request, {profile} load: token times via a generate() streamer; TTFT and e2e "
                             "from the request's arrival (queueing included)"),
        *serving_metrics(runs, dataclasses.asdict(sc.slo), profile),
    ]
    if Capability.PARAMETERS in backend.capabilities:
        metrics.append(make_metric("model.parameters", backend.parameters["total"], Source.ANALYTIC,
                                   note="sum of parameter numel"))
    backend.close()
    return ScenarioResult(metrics, model_name=backend.model_name, provenance=backend.provenance)


SPEC = register_scenario(ScenarioSpec("serve", ServeScenario, validate, run, axes=("inference",),
                                      uses_backend=True))
