"""Throughput family (docs/spec.md §2): prefill and decode tokens/s from per-token timing."""

from __future__ import annotations

from effbench.metrics.catalog import from_samples
from effbench.metrics.latency import RequestTiming
from effbench.metrics.record import Metric, Source


def throughput_metrics(requests: list[RequestTiming], batch_size: int, prompt_tokens: int) -> list[Metric]:
    """Prefill: batch × prompt tokens / TTFT. Decode: tokens after the first of
    every sequence / (e2e − TTFT), since the first token comes out of prefill."""
    how = "token counts / per-token timestamps"
    return [
        from_samples("throughput.prefill_tokens_per_s",
                     [batch_size * prompt_tokens / r.ttft for r in requests], Source.TIMER, how),
        from_samples("throughput.decode_tokens_per_s",
                     [batch_size * (r.steps - 1) / (r.e2e - r.ttft) for r in requests], Source.TIMER, how),
    ]
