"""Serving figures (docs/spec.md §2, beyond the paper): request and token rates under a
stated load profile, and goodput against latency SLOs. One sample per repeat
of the whole load; the per-request latencies go to the latency family."""

from __future__ import annotations

import statistics
from typing import Protocol

from effbench.metrics.catalog import from_samples
from effbench.metrics.latency import RequestTiming
from effbench.metrics.record import Metric, Source


class ServedLoad(Protocol):
    """One run of a load: in-process (serving.harness.LoadResult) or over HTTP (serving.http_load.HttpLoadResult)."""

    requests: list[RequestTiming]  # the answered requests
    batch_sizes: list[int]  # every batch the server ran; empty where its batching is not visible
    failed_count: int  # requests that got no whole answer (HTTP error, timeout, malformed stream)
    duration_s: float  # first arrival to the last answer or failure
    arrivals: list[float]  # every request's scheduled arrival, seconds from the first


def meets_slos(r: RequestTiming, slos: dict[str, float | None]) -> bool:
    """All stated bounds hold (a None bound is no bound); keys are RequestTiming's
    ttft / tpot / e2e with `_s`, as in the scenario's `slo` (SloConfig)."""
    return all(bound is None or getattr(r, key.removesuffix("_s")) <= bound for key, bound in slos.items())


def describe_slos(slos: dict[str, float | None]) -> str:
    stated = [f"{k.removesuffix('_s')} ≤ {v:g} s" for k, v in slos.items() if v is not None]
    return " and ".join(stated) if stated else "no SLO stated: every completed request counts"


def serving_metrics(runs: list[ServedLoad], slos: dict[str, float | None], profile: str) -> list[Metric]:
    """A failed request counts against goodput and attainment (it met no SLO)."""
    how = f"{profile} load; completed / (last completion − first arrival), one sample per repeat"
    good = [sum(meets_slos(r, slos) for r in run.requests) for run in runs]
    sent = [len(run.requests) + run.failed_count for run in runs]
    slo_note = describe_slos(slos)
    if any(run.failed_count for run in runs):
        slo_note += "; failed requests count as missing them"
    metrics = [
        from_samples("serve.requests_per_s", [len(run.requests) / run.duration_s for run in runs], Source.TIMER, how),
        from_samples("serve.output_tokens_per_s",
                     [sum(r.steps for r in run.requests) / run.duration_s for run in runs], Source.TIMER, how),
        from_samples("serve.goodput_requests_per_s", [g / run.duration_s for g, run in zip(good, runs)],
                     Source.TIMER, f"requests with {slo_note} / duration"),
        from_samples("serve.slo_attainment", [g / n for g, n in zip(good, sent)], Source.TIMER, slo_note),
    ]
    if all(run.batch_sizes for run in runs):
        metrics.append(from_samples("serve.mean_batch_size", [statistics.fmean(run.batch_sizes) for run in runs],
                                    Source.TIMER, "requests per generate() call the server ran"))
    return metrics
