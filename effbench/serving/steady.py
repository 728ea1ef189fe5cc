"""The steady-state window of a load and the figures over it.

The whole load window includes ramp-up (the batch filling) and drain (the last
requests finishing with fewer beside them), which understate throughput and
overstate energy per token. As in the ML.ENERGY benchmark, figures are also
given over the steady state, from when the batch first fills until the
backlog starts draining, defined here from the request timestamps alone:

- A request is *running* (in the server's decode batch, as far as a client can
  tell) from its first token to its last: [first, last).
- The batch first fills at `start`: the first time the running count reaches
  its maximum over the load.
- The backlog starts draining at `end`: the first completion at or after the
  last request's first token. From then on no waiting request is left to take
  a finished request's place, so the batch only shrinks.

There is no steady state (None) when end ≤ start. A light open-loop load has
no plateau, so the window is reported with the time-average running count
over it beside the peak: a mean far below the peak says the window was no
plateau.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from effbench.metrics.latency import RequestTiming


@dataclass(frozen=True)
class SteadyWindow:
    start: float
    end: float
    peak_running: int  # the maximum running count, reached at `start`
    mean_running: float  # time-average running count over [start, end)
    tokens: int  # output tokens whose time falls in [start, end)

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.duration_s


def _running_steps(requests: list[RequestTiming]) -> tuple[np.ndarray, np.ndarray]:
    """Times at which the running count changes and the count from each on.
    At equal times a completion is counted before a start, so a request that
    takes a finished one's place does not count twice."""
    events = sorted([(r.token_times[0], 1) for r in requests] + [(r.token_times[-1], -1) for r in requests])
    times = np.array([t for t, _ in events])
    counts = np.cumsum([d for _, d in events])
    return times, counts


def steady_window(requests: list[RequestTiming]) -> SteadyWindow | None:
    """The steady-state window of the answered requests (see the module docstring)."""
    if not requests:
        return None
    times, counts = _running_steps(requests)
    peak = int(counts.max())
    start = float(times[int(np.argmax(counts == peak))])
    last_first_token = max(r.token_times[0] for r in requests)
    end = min(r.token_times[-1] for r in requests if r.token_times[-1] >= last_first_token)
    if end <= start or peak == 0:
        return None
    # Time-average of the step function over [start, end).
    inside = (times >= start) & (times < end)
    edges = np.concatenate([times[inside], [end]])
    mean = float(np.sum(counts[inside] * np.diff(edges)) / (end - start))
    tokens = sum(start <= t < end for r in requests for t in r.token_times)
    return SteadyWindow(start, end, peak, mean, tokens)
