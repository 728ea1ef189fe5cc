"""The timing harness: feeds a load profile's requests to a system under test
that serves a batch of waiting requests at a time, and times every request
from its arrival, so queueing shows in TTFT and end-to-end latency."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from effbench.metrics.latency import RequestTiming
from effbench.serving.load import Load

# Serves the given request indices as one batch; returns the clock time at
# which each output step's tokens existed (the same for every request in it).
Server = Callable[[list[int]], list[float]]


@dataclass
class LoadResult:
    requests: list[RequestTiming]  # start = arrival time
    batch_sizes: list[int]  # of every batch the server ran
    start: float  # the load's time zero (first arrival)
    end: float  # last completion
    failed_count: int = 0  # in-process a request cannot fail without failing the run

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    @property
    def arrivals(self) -> list[float]:
        """Arrival offsets from time zero, in the order requests were served (first come, first served)."""
        return [r.start - self.start for r in self.requests]


def drive(load: Load, server: Server, max_batch_size: int,
          clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep) -> LoadResult:
    """First come, first served: whenever the server is free it takes up to
    max_batch_size requests that have arrived, or waits for the next arrival."""
    t0 = clock()
    waiting = sorted(load.first_arrivals())  # arrival offsets, not yet served
    requests: list[RequestTiming] = []
    batch_sizes: list[int] = []
    end = t0
    while waiting:
        now = clock() - t0
        if waiting[0] > now:
            sleep(waiting[0] - now)
            continue
        batch = [a for a in waiting[:max_batch_size] if a <= now]
        del waiting[: len(batch)]
        steps = server(list(range(len(requests), len(requests) + len(batch))))
        requests += [RequestTiming(t0 + a, list(steps)) for a in batch]
        batch_sizes.append(len(batch))
        end = steps[-1]
        for _ in batch:
            waiting += load.on_complete(end - t0)
        waiting.sort()
    return LoadResult(requests, batch_sizes, t0, end)
