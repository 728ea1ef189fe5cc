"""The load driver over HTTP: sends a load profile's requests to a server at
their arrival times, each on its own task, so an open loop never waits for the
server (a closed loop sends the next request when one is answered, as its
profile says). Warm-up requests are sent and answered first and never enter
the figures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from effbench.metrics.latency import RequestTiming
from effbench.serving.load import Load
from effbench.serving.openai_client import OpenAIStreamClient, ServingError, StreamedRequest, check_server
from effbench.serving.prompts import Prompt

# Time between starting the schedule and its first arrival, so the first tasks
# are created before they are due.
_LEAD_S = 0.005


@dataclass
class HttpLoadResult:
    """One run of a load profile against a server (metrics.serving.ServedLoad)."""

    results: list[StreamedRequest]  # the measured requests, by index (send order)
    start: float  # the load's time zero: the first scheduled arrival
    end: float  # the last request's end, answered or failed
    warmup: list[StreamedRequest] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)  # the server's batching is not visible over HTTP

    @property
    def completed(self) -> list[StreamedRequest]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> list[StreamedRequest]:
        return [r for r in self.results if not r.ok]

    @property
    def requests(self) -> list[RequestTiming]:
        """Timings of the answered requests (TTFT and e2e from the scheduled arrival)."""
        return [r.timing() for r in self.completed]

    @property
    def failed_count(self) -> int:
        return len(self.failed)

    @property
    def error_rate(self) -> float:
        return self.failed_count / len(self.results)

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    @property
    def arrivals(self) -> list[float]:
        """Scheduled arrival offsets from time zero, by request index."""
        return [r.arrival - self.start for r in self.results]


async def drive_http(client: OpenAIStreamClient, load: Load, prompts: list[Prompt], max_tokens: int
                     ) -> HttpLoadResult:
    """Request i sends prompts[i % len(prompts)] with max_tokens; the client
    must be open (`async with client`)."""
    clock = client.clock
    t0 = clock() + _LEAD_S
    results: list[StreamedRequest | None] = []
    pending: set[asyncio.Task] = set()

    def spawn(offset: float) -> None:
        index = len(results)
        results.append(None)
        pending.add(asyncio.create_task(send(index, t0 + offset)))

    async def send(index: int, arrival: float) -> None:
        await asyncio.sleep(max(0.0, arrival - clock()))
        r = await client.request(index, prompts[index % len(prompts)], max_tokens, arrival)
        results[index] = r
        for offset in load.on_complete(r.done - t0):
            spawn(offset)

    for offset in load.first_arrivals():
        spawn(offset)
    while pending:
        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        pending -= done
        for task in done:
            task.result()  # a bug in the driver must not pass silently
    return HttpLoadResult(results, t0, max(r.done for r in results))


async def _warm_up(client: OpenAIStreamClient, prompts: list[Prompt], max_tokens: int, count: int
                   ) -> list[StreamedRequest]:
    """`count` requests at once, all answered before the load starts. A server
    that fails every one of them cannot be measured."""
    if count <= 0:
        return []
    now = client.clock()
    warm = await asyncio.gather(*(client.request(-1 - i, prompts[i % len(prompts)], max_tokens, now)
                                  for i in range(count)))
    if all(not r.ok for r in warm):
        raise ServingError(f"every warm-up request to {client.url} failed, e.g. {warm[0].error}")
    return list(warm)


def run_http_load(client: OpenAIStreamClient, load: Load, prompts: list[Prompt], max_tokens: int,
                  warmup: int = 0, window: Callable[[], AbstractContextManager] = nullcontext) -> HttpLoadResult:
    """Check the server is up (ServerUnavailable naming its URL if not), warm
    up, then run the load inside `window()` (e.g. MeasuredWindow.measure, so
    trackers see the load and not the warm-up), in a fresh event loop. A
    client without a model name asks for the first model the server lists."""
    models = check_server(client.url)
    if client.model is None and models:
        client.model = models[0]

    async def main() -> HttpLoadResult:
        async with client:
            warm = await _warm_up(client, prompts, max_tokens, warmup)
            with window():
                run = await drive_http(client, load, prompts, max_tokens)
            run.warmup = warm
            return run

    return asyncio.run(main())
