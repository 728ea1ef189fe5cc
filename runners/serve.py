"""Serving scenario: requests arrive by a load profile and are served in one of two ways.

- In process (backend=hf): first come, first served, up to max_batch_size at a
  time, each batch one greedy generation through the backend (static batching:
  a batch runs to its end before the next forms).
- By a server over HTTP (backend=openai, e.g. backend=transformers-serve): each
  request is streamed from an OpenAI-compatible server at its arrival time and
  batched however the server batches (continuous batching); failed requests
  are kept with their error and count against goodput.

Every request is timed from its scheduled arrival. `repeats` runs of the load,
each one measured window (warm-up outside it). Then, outside the windows, a
rate sweep (`rates`: one Poisson load per rate, the load curve and its knee)
and a capacity search (`capacity`), both under the same SLOs and `slo_target`.
"""

from __future__ import annotations

import enum
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

from effbench.errors import ConfigError
from effbench.serving.config import CapacityConfig, CapacityLoad
from runners.base import ScenarioResult, ScenarioSpec, at_least, register_scenario

if TYPE_CHECKING:
    import torch

    from effbench.config.schema import RunConfig
    from effbench.metrics.record import Metric
    from effbench.metrics.serving import ServedLoad
    from effbench.serving.load import Load
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
    """Requests arriving under a load profile, served in process in batches of up
    to max_batch_size or by a server over HTTP; every request timed from its arrival."""

    name: str = "serve"
    profile: LoadProfile = LoadProfile.poisson
    num_requests: int = 32  # per repeat, and per rate of a sweep
    batch_size: int = 4  # profile=batch
    concurrency: int = 4  # profile=concurrency
    rate: float = 4.0  # profile=poisson: λ, requests per second
    max_batch_size: int = 8  # in process: largest batch formed from waiting requests (profile=batch: batch_size)
    prompt_tokens: int = 64
    output_tokens: int = 32
    cache_implementation: CacheImplementation = CacheImplementation.dynamic  # in process only
    warmup: int = 1  # in process: generate() calls at max batch; server: requests sent together; before the load
    repeats: int = 3  # whole load runs; each gives one sample of the serve.* rates
    slo: SloConfig = field(default_factory=SloConfig)
    slo_target: float = 0.9  # share of requests meeting every SLO that a load must reach (knee, capacity)
    rates: list[float] = field(default_factory=list)  # a rate sweep after the load: one Poisson load per rate
    capacity: CapacityConfig = field(default_factory=CapacityConfig)


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
    if not 0 < sc.slo_target <= 1:
        raise ConfigError(f"scenario.slo_target={sc.slo_target} must be in (0, 1]: the share of requests meeting "
                          "every SLO")
    if any(not r > 0 for r in sc.rates) or len(set(sc.rates)) != len(sc.rates):
        raise ConfigError(f"scenario.rates={list(sc.rates)} must be distinct rates > 0 requests per second "
                          "(or [] for no sweep)")
    _validate_capacity(sc.capacity, sc.slo_target)
    if cfg.backend.kind != "hf" and sc.cache_implementation is not CacheImplementation.dynamic:
        raise ConfigError(f"scenario.cache_implementation={sc.cache_implementation.value} is the in-process "
                          f"generate()'s; backend={cfg.backend.kind} is a server that manages its own KV cache")


def _validate_capacity(cap: CapacityConfig, target: float) -> None:
    import math
    from statistics import NormalDist

    if not cap.enabled:
        return
    at_least("scenario.capacity", cap, ("requests_per_look", "max_looks"))
    if not 0 < cap.confidence < 1:
        raise ConfigError(f"scenario.capacity.confidence={cap.confidence} must be in (0, 1)")
    # Even if every request of every look met the SLOs, the Wilson interval's low end
    # n / (n + z²) must reach the target, or no load can ever be shown to meet it.
    z2 = NormalDist().inv_cdf(0.5 + cap.confidence / 2) ** 2
    n = cap.requests_per_look * cap.max_looks
    if n / (n + z2) < target:
        needed = "no number" if target >= 1 else f"at least {math.ceil(target * z2 / (1 - target))}"
        raise ConfigError(
            f"scenario.capacity: requests_per_look × max_looks = {n} requests can never show SLO attainment ≥ "
            f"slo_target={target} with confidence {cap.confidence} (all {n} meeting the SLOs gives a Wilson low end "
            f"of {n / (n + z2):.3f}); {needed} requests are needed")
    if not cap.rel_tol > 0:
        raise ConfigError(f"scenario.capacity.rel_tol={cap.rel_tol} must be > 0")
    if not 0 < cap.start <= cap.max_load:
        raise ConfigError(f"scenario.capacity.start={cap.start} must be > 0 and ≤ max_load={cap.max_load}")
    if cap.load is CapacityLoad.concurrency and not (float(cap.start).is_integer() and cap.start >= 1
                                                     and float(cap.max_load).is_integer()):
        raise ConfigError(f"scenario.capacity.load=concurrency counts clients: start={cap.start} and "
                          f"max_load={cap.max_load} must be whole numbers ≥ 1")


class InProcess:
    """Static batching through a backend with Capability.GENERATE; the standard
    trackers (this process holds the model: its memory, CPU/GPU and energy)."""

    def __init__(self, subject: Subject, device: torch.device):
        from effbench.metrics.trackers import standard_window
        from effbench.serving.load import batch_cap
        from runners.generation import heldout_ids, load_backend, make_prompts

        sc = self.sc = subject.scenario
        self.backend = load_backend(subject, device, cache_implementation=sc.cache_implementation.value)
        self.max_batch = batch_cap(sc.profile.value, sc.batch_size, sc.max_batch_size)  # of the measured load
        self.prompts = make_prompts(heldout_ids(subject, self.backend.tokenizer), sc.num_requests,
                                    sc.prompt_tokens, subject.seed).to(device)
        self.window = standard_window(device, subject.technique.compute_dtype(subject.technique_config),
                                      tokens_per_window=sc.num_requests * sc.output_tokens)
        self.provenance = dict(self.backend.provenance)
        self.warnings: list[str] = []

    def _serve_batch(self, request_ids: list[int]) -> list[float]:
        """The system under test: one batched greedy generation per batch of waiting requests."""
        rows = [i % len(self.prompts) for i in request_ids]
        return self.backend.generate(self.prompts[rows], self.sc.output_tokens).token_times

    def run_load(self, load: Load, window: Callable[[], AbstractContextManager] = nullcontext,
                 max_batch: int | None = None) -> ServedLoad:
        import torch

        from effbench.serving.harness import drive

        with torch.inference_mode(), window():
            return drive(load, self._serve_batch, max_batch or self.sc.max_batch_size)

    def measure(self, loads: list[Load]) -> list[ServedLoad]:
        import torch

        sc = self.sc
        with torch.inference_mode():
            for _ in range(sc.warmup):
                self.backend.generate_untimed(self.prompts[: min(self.max_batch, sc.num_requests)], sc.output_tokens)
        return [self.run_load(load, self.window.measure, self.max_batch) for load in loads]

    def metrics(self, runs: list[ServedLoad], slos: dict) -> list[Metric]:
        from effbench.backends import Capability
        from effbench.metrics.catalog import make_metric
        from effbench.metrics.latency import latency_metrics
        from effbench.metrics.record import Source
        from effbench.metrics.serving import serving_metrics
        from effbench.serving.figures import load_metrics, steady_metrics

        profile = self.sc.profile.value
        out = [
            *self.window.metrics(),
            *latency_metrics([r for run in runs for r in run.requests],
                             how=f"per request, {profile} load: token times via a generate() streamer; TTFT and "
                                 "e2e from the request's arrival (queueing included)"),
            *serving_metrics(runs, slos, profile), *load_metrics(runs), *steady_metrics(runs),
        ]
        if Capability.PARAMETERS in self.backend.capabilities:
            out.append(make_metric("model.parameters", self.backend.parameters["total"], Source.ANALYTIC,
                                   note="sum of parameter numel"))
        return out

    def close(self) -> None:
        self.backend.close()


class OverHttp:
    """A server over its OpenAI-compatible API (effbench.backends.openai): the
    load driver of serving.http_load; the server's own cost over the window."""

    def __init__(self, subject: Subject, device: torch.device):
        from runners.generation import load_backend

        self.sc = subject.scenario
        self.backend = load_backend(subject, device)  # starts a managed server
        try:
            self._prepare(subject)
        except BaseException:
            self.backend.close()
            raise

    def _prepare(self, subject: Subject) -> None:
        import torch

        from effbench.metrics.window import MeasuredWindow
        from effbench.serving.prompts import exact_token_prompts
        from runners.generation import heldout_ids

        sc, tokenizer = self.sc, self.backend.tokenizer
        self.prompts = exact_token_prompts(tokenizer, heldout_ids(subject, tokenizer), sc.num_requests,
                                           sc.prompt_tokens, subject.seed)
        self.client = self.backend.client()
        self.cost = self.backend.cost_tracker()
        # The CPU device: this process only sends requests, so no synchronize (nor a CUDA context) here.
        self.window = MeasuredWindow([self.cost], torch.device("cpu"))
        self.warmup_left = sc.warmup
        self.steady: list = []
        self.provenance = dict(self.backend.provenance)
        self.warnings: list[str] = []

    def run_load(self, load: Load, window: Callable[[], AbstractContextManager] = nullcontext) -> ServedLoad:
        """The first load also sends the warm-up requests, before its window opens."""
        from effbench.serving.http_load import run_http_load

        warmup, self.warmup_left = self.warmup_left, 0
        return run_http_load(self.client, load, self.prompts, self.sc.output_tokens, warmup=warmup, window=window)

    def measure(self, loads: list[Load]) -> list[ServedLoad]:
        from effbench.serving.figures import steady_energy

        runs = []
        for load in loads:
            run = self.run_load(load, self.window.measure)
            self.cost.add_tokens(sum(r.output_tokens for r in run.completed))
            self.steady.append(steady_energy(run, self.cost.energy_between))  # while the tracker holds its samples
            runs.append(run)
        return runs

    def metrics(self, runs: list[ServedLoad], slos: dict) -> list[Metric]:
        from effbench.serving.figures import failed_requests, http_serving_metrics

        failed, summary = failed_requests(runs)
        if summary:
            self.warnings.append(summary)
            self.provenance["failed_requests"] = failed
        if self.cost.not_measured:
            self.provenance["not_measured"] = dict(self.cost.not_measured)
        return [*self.window.metrics(), *http_serving_metrics(runs, slos, self.sc.profile.value, self.steady)]

    def close(self) -> None:
        self.backend.close()


def run(subject: Subject, ctx: RunContext) -> ScenarioResult:
    import dataclasses

    from tqdm.auto import tqdm

    from effbench.backends import OpenAIBackendConfig
    from effbench.serving.capacity import find_capacity, load_measure, sweep_metrics, sweep_point
    from effbench.serving.load import OpenLoop, make_load, poisson_offsets

    sc: ServeScenario = subject.scenario
    slos = dataclasses.asdict(sc.slo)
    serving = (OverHttp if isinstance(subject.backend, OpenAIBackendConfig) else InProcess)(subject, ctx.device)
    try:
        # Same arrivals each repeat.
        loads = [make_load(sc.profile.value, num_requests=sc.num_requests, batch_size=sc.batch_size,
                           concurrency=sc.concurrency, rate=sc.rate, seed=subject.seed) for _ in range(sc.repeats)]
        runs = serving.measure(tqdm(loads, desc=f"{subject.label} ({sc.profile.value})", leave=False, unit="load"))
        metrics = serving.metrics(runs, slos)
        if sc.rates:
            points = [sweep_point(rate, serving.run_load(OpenLoop(poisson_offsets(rate, sc.num_requests,
                                                                                  subject.seed))), slos)
                      for rate in tqdm(sorted(sc.rates), desc="rate sweep", leave=False, unit="rate")]
            figures, warnings = sweep_metrics(points, sc.slo_target, slos)
            metrics += figures
            serving.warnings += warnings
        if sc.capacity.enabled:
            cap = sc.capacity
            found = find_capacity(load_measure(serving.run_load, slos, cap.load, cap.requests_per_look, subject.seed),
                                  kind=cap.load, start=cap.start, max_load=cap.max_load, target=sc.slo_target,
                                  confidence=cap.confidence, max_looks=cap.max_looks, rel_tol=cap.rel_tol)
            if found.load is None:
                serving.warnings.append(f"capacity search: no load tried meets the target, so no capacity metric: "
                                        f"{found.how}")
            else:
                metrics.append(found.metric())
    finally:
        serving.close()
    return ScenarioResult(metrics, model_name=serving.backend.model_name, provenance=serving.provenance,
                          warnings=serving.warnings)


SPEC = register_scenario(ScenarioSpec("serve", ServeScenario, validate, run, axes=("inference",),
                                      uses_backend=True))
