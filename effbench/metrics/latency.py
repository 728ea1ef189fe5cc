"""Latency family (docs/spec.md §2): per-token timing of generation.

One `generate()` call only tells end-to-end time; TTFT and ITL need the time of
every token, which a streamer sees as generate pushes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers.generation.streamers import BaseStreamer

from effbench.hardware import synchronize
from effbench.metrics.catalog import from_samples
from effbench.metrics.record import Metric, Source


class TokenTimer(BaseStreamer):
    """Records a timestamp per generation step. generate() first puts the prompt,
    then one tensor per decoding step (all sequences of the batch at once)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = 0.0
        self.token_times: list[float] = []
        self._prompt_seen = False

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.token_times = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        synchronize(self.device)  # the token must exist, not just be queued
        self.token_times.append(time.perf_counter())

    def end(self) -> None:
        pass

    def timing(self) -> RequestTiming:
        return RequestTiming(self.start, list(self.token_times))


@dataclass
class RequestTiming:
    start: float
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.start

    @property
    def e2e(self) -> float:
        return self.token_times[-1] - self.start

    @property
    def steps(self) -> int:
        return len(self.token_times)

    @property
    def tpot(self) -> float:
        if self.steps < 2:
            raise ValueError("TPOT needs at least two output tokens")
        return (self.e2e - self.ttft) / (self.steps - 1)

    @property
    def itl(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:])]


def latency_metrics(requests: list[RequestTiming],
                    how: str = "perf_counter per generated token via a generate() streamer") -> list[Metric]:
    return [
        from_samples("latency.ttft_s", [r.ttft for r in requests], Source.TIMER, how),
        from_samples("latency.tpot_s", [r.tpot for r in requests], Source.TIMER, how),
        from_samples("latency.itl_s", [g for r in requests for g in r.itl], Source.TIMER, how),
        from_samples("latency.e2e_s", [r.e2e for r in requests], Source.TIMER, how),
    ]

