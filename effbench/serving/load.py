"""Load profiles: when requests arrive.

A profile gives the arrivals known at the start and, for closed loops, the
arrival a completion triggers. Times are seconds from the start of the load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


def poisson_offsets(rate: float, count: int, seed: int) -> list[float]:
    """Arrival times of a Poisson process of `rate` per second: the first at 0,
    then exponential gaps of mean 1/rate drawn from a generator seeded with `seed`
    (same seed, same schedule, on any machine)."""
    if rate <= 0:
        raise ValueError(f"arrival rate must be > 0, got {rate}")
    g = torch.Generator().manual_seed(seed)
    gaps = torch.empty(max(count - 1, 0), dtype=torch.float64).exponential_(rate, generator=g)
    return [0.0, *torch.cumsum(gaps, 0).tolist()][:count]


class Load(Protocol):
    def first_arrivals(self) -> list[float]:
        """Arrival offsets known at the start (resets a closed loop's count)."""

    def on_complete(self, t: float) -> list[float]:
        """Arrivals that the completion of a request at offset t triggers."""


@dataclass
class OpenLoop:
    """Arrivals fixed in advance (Poisson): they come whether or not the server keeps up."""

    offsets: list[float]

    def first_arrivals(self) -> list[float]:
        return list(self.offsets)

    def on_complete(self, t: float) -> list[float]:
        return []


@dataclass
class ClosedLoop:
    """`concurrency` clients; each sends its next request the moment the previous
    one returns, until `total` requests have been sent."""

    concurrency: int
    total: int
    _sent: int = field(default=0, init=False)

    def first_arrivals(self) -> list[float]:
        self._sent = min(self.concurrency, self.total)
        return [0.0] * self._sent

    def on_complete(self, t: float) -> list[float]:
        if self._sent >= self.total:
            return []
        self._sent += 1
        return [t]


@dataclass
class Waves:
    """`batch_size` requests at once, the next wave when the whole wave has been
    answered, until `total` have been sent. In-process the harness serves each
    wave as one static batch; over HTTP the server may batch as it likes."""

    batch_size: int
    total: int
    _sent: int = field(default=0, init=False)
    _open: int = field(default=0, init=False)

    def _wave(self, t: float) -> list[float]:
        n = min(self.batch_size, self.total - self._sent)
        self._sent += n
        self._open = n
        return [t] * n

    def first_arrivals(self) -> list[float]:
        self._sent = 0
        return self._wave(0.0)

    def on_complete(self, t: float) -> list[float]:
        self._open -= 1
        return self._wave(t) if self._open == 0 else []


def make_load(profile: str, *, num_requests: int, batch_size: int, concurrency: int, rate: float, seed: int
              ) -> Load:
    """A fresh load (closed loops count what they sent). `batch` sends waves of
    batch_size, served batch_size at a time in-process (see batch_cap)."""
    if profile == "batch":
        return Waves(batch_size, num_requests)
    if profile == "concurrency":
        return ClosedLoop(concurrency, num_requests)
    if profile == "poisson":
        return OpenLoop(poisson_offsets(rate, num_requests, seed))
    raise ValueError(f"unknown load profile {profile!r}; choose batch, concurrency or poisson")


def batch_cap(profile: str, batch_size: int, max_batch_size: int) -> int:
    """Largest batch the server may form: fixed-batch runs exactly batch_size."""
    return batch_size if profile == "batch" else max_batch_size
