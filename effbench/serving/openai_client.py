"""A streaming client for OpenAI-compatible servers (vLLM, SGLang, TGI,
llama.cpp's server, `transformers serve`): one request's answer, timed chunk by chunk.

Timing. Every request carries its scheduled arrival time; TTFT and end-to-end
latency run from it, so a late send or a server queue both show. A chunk is
stamped (perf_counter) when its server-sent event has been read.

Counting tokens. The server's `usage.completion_tokens` (asked for with
stream_options.include_usage; some servers always send it) is the request's
output token count when present, else each chunk's text re-encoded with the
model's tokenizer. How a chunk's tokens are known: one per chunk when usage
equals the chunk count (the common case: one decode step, one event); else the
usage total is spread over the chunks by their re-encoded lengths (a chunk can
hold several tokens, e.g. bytes of one character held back by the server's
incremental decoder). `token_source` says which rule a request used.

Token gaps. A chunk of k tokens that arrives `gap` after the previous chunk
puts its tokens at gap/k steps (the gap is split evenly), so a request of n
tokens always has n − 1 inter-token gaps and TPOT = (e2e − TTFT)/(n − 1)
whatever the chunking; the first chunk's tokens all count at its arrival.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx

from effbench.errors import ConfigError
from effbench.metrics.latency import RequestTiming
from effbench.serving.config import Endpoint
from effbench.serving.prompts import Prompt

PATHS = {Endpoint.completions: "/v1/completions", Endpoint.chat: "/v1/chat/completions"}


class ServingError(RuntimeError):
    """A server that cannot be benchmarked (not up, failed to start, failing every warm-up request)."""


class ServerUnavailable(ServingError, ConfigError):
    """Nothing OpenAI-compatible answers at the URL: bad input (exit 2)."""


def server_root(url: str) -> str:
    """Accept both conventions: the server root and OpenAI's base_url (root + /v1)."""
    return url.rstrip("/").removesuffix("/v1")


def check_server(url: str, timeout_s: float = 10.0) -> list[str]:
    """The model ids the server lists (GET /v1/models); ServerUnavailable naming
    the URL and what to check when nothing OpenAI-compatible answers there."""
    root = server_root(url)
    try:
        response = httpx.get(f"{root}/v1/models", timeout=timeout_s)
    except httpx.HTTPError as e:
        raise ServerUnavailable(
            f"no server answers at {root} ({type(e).__name__}: {e}). Check that the server is running and "
            f"listening on that host and port (and http vs https), that backend.url is right, or give "
            f"backend.server.command so effbench starts the server itself") from None
    if response.status_code != 200:
        raise ServerUnavailable(
            f"{root} answers GET /v1/models with HTTP {response.status_code}: not an OpenAI-compatible server "
            f"there. Check that backend.url is the server's root (e.g. http://127.0.0.1:8000) and that it serves the "
            f"OpenAI API")
    return [m["id"] for m in response.json().get("data", [])]


@dataclass
class StreamedRequest:
    """One request as the client saw it; kept whole when it failed."""

    index: int
    arrival: float  # scheduled send time (perf_counter): TTFT and e2e run from here
    max_tokens: int
    prompt_tokens: int | None  # what the server should count (None for chat: its template adds tokens)
    sent: float = math.nan  # when the request left (≥ arrival; the difference is the client's lag)
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk holding output text
    chunk_tokens: list[int] = field(default_factory=list)  # tokens in each of those chunks
    token_source: str = ""
    output_tokens: int = 0
    server_prompt_tokens: int | None = None  # usage.prompt_tokens, when the server sent usage
    finish_reason: str | None = None
    done: float = math.nan  # when the answer ended or the request failed
    error: str | None = None  # why it failed: HTTP status, timeout, connection, malformed stream
    status: int | None = None  # HTTP status code, when one came back

    @property
    def ok(self) -> bool:
        return self.error is None

    def timing(self) -> RequestTiming:
        return RequestTiming(self.arrival, spread_token_times(self.chunk_times, self.chunk_tokens))


def spread_token_times(chunk_times: list[float], chunk_tokens: list[int]) -> list[float]:
    """One time per token: a chunk's gap since the previous chunk split evenly over its tokens."""
    times: list[float] = []
    previous = None
    for t, k in zip(chunk_times, chunk_tokens):
        if previous is None:
            times += [t] * k
        else:
            times += [previous + (t - previous) * (i + 1) / k for i in range(k)]
        previous = t
    return times


def _spread_total(total: int, weights: list[int]) -> list[int]:
    """`total` tokens over chunks: one each, the rest in proportion to weight − 1
    (largest remainder; evenly when every weight is 1)."""
    extra = [w - 1 for w in weights] if any(w > 1 for w in weights) else [1] * len(weights)
    share = [(total - len(weights)) * e / sum(extra) for e in extra]
    counts = [int(s) for s in share]
    by_remainder = sorted(range(len(share)), key=lambda i: share[i] - counts[i], reverse=True)
    for i in by_remainder[: total - len(weights) - sum(counts)]:
        counts[i] += 1
    return [1 + c for c in counts]


def count_chunk_tokens(texts: list[str], usage_tokens: int | None, count_tokens: Callable[[str], int]
                       ) -> tuple[list[int], str]:
    """Tokens per chunk and the rule used (see the module docstring)."""
    if not texts:
        return [], "no output text"
    if usage_tokens is not None and usage_tokens == len(texts):
        return [1] * len(texts), "usage: one token per chunk"
    encoded = [max(1, count_tokens(t)) for t in texts]
    if usage_tokens is None:
        return encoded, "tokenizer: each chunk's text re-encoded (no usage from the server)"
    if usage_tokens < len(texts):
        return encoded, (f"tokenizer: each chunk's text re-encoded (usage.completion_tokens={usage_tokens} "
                         f"is below the {len(texts)} chunks, ignored)")
    return _spread_total(usage_tokens, encoded), "usage total spread over chunks by their re-encoded length"


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The data of each server-sent event: `data:` lines, an empty line ends an
    event (the event-stream format; OpenAI streams use no other field)."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            yield "\n".join(data)
            data = []
    if data:
        yield "\n".join(data)


class _Failed(Exception):
    """What the server did wrong; stored as the request's error."""


class OpenAIStreamClient:
    """Streams completions from one server. Use `async with client:` (it owns an
    httpx.AsyncClient with no connection cap, so requests never queue client-side)."""

    def __init__(self, url: str, count_tokens: Callable[[str], int], *, endpoint: Endpoint = Endpoint.completions,
                 model: str | None = None, timeout_s: float = 300.0, extra_body: dict | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.url = server_root(url)
        self.count_tokens = count_tokens
        self.endpoint = Endpoint(endpoint)
        self.model = model
        self.timeout_s = timeout_s
        self.extra_body = dict(extra_body or {})
        self.clock = clock
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> OpenAIStreamClient:
        self._http = httpx.AsyncClient(timeout=self.timeout_s,
                                       limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._http.aclose()
        self._http = None

    def body(self, prompt: Prompt, max_tokens: int) -> dict:
        body: dict = {"max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
                      "temperature": 0.0}
        if self.endpoint is Endpoint.chat:
            body["messages"] = [{"role": "user", "content": prompt.text}]
        else:
            body["prompt"] = prompt.text
        if self.model is not None:
            body["model"] = self.model
        return body | self.extra_body

    async def request(self, index: int, prompt: Prompt, max_tokens: int, arrival: float) -> StreamedRequest:
        """Send now; never raises for what the server does: a failure is stored on the request."""
        r = StreamedRequest(index, arrival, max_tokens, prompt.server_tokens if self.endpoint is Endpoint.completions
                            else None)
        texts: list[str] = []
        usage: dict | None = None
        r.sent = self.clock()
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._http.stream("POST", self.url + PATHS[self.endpoint], json=self.body(prompt, max_tokens)
                                             ) as response:
                    r.status = response.status_code
                    if response.status_code != 200:
                        detail = (await response.aread()).decode(errors="replace")[:300]
                        raise _Failed(f"HTTP {response.status_code}: {detail}")
                    async for data in _sse_data(response):
                        if data.strip() == "[DONE]":
                            break
                        text, usage_now = self._parse(data, r)
                        usage = usage_now or usage
                        if text:
                            r.chunk_times.append(self.clock())
                            texts.append(text)
            if r.finish_reason is None:
                raise _Failed("malformed stream: it ended without a finish_reason (cut short)")
            if not texts:
                raise _Failed(f"no output text in the answer (finish_reason={r.finish_reason})")
        except _Failed as e:
            r.error = str(e)
        except TimeoutError:
            r.error = f"timeout: no complete answer within {self.timeout_s:g} s"
        except httpx.TimeoutException as e:
            r.error = f"timeout: {type(e).__name__} after {self.timeout_s:g} s without data"
        except httpx.HTTPError as e:
            r.error = f"connection: {type(e).__name__}: {e}"
        r.done = self.clock()
        if usage is not None:
            r.server_prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens") if usage else None
        r.chunk_tokens, r.token_source = count_chunk_tokens(texts, completion_tokens, self.count_tokens)
        r.output_tokens = sum(r.chunk_tokens)
        return r

    def _parse(self, data: str, r: StreamedRequest) -> tuple[str, dict | None]:
        """The chunk's output text and usage; finish_reason is kept on the request."""
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            raise _Failed(f"malformed stream: an event is not JSON: {data[:120]!r}") from None
        if not isinstance(event, dict):
            raise _Failed(f"malformed stream: an event is not a JSON object: {data[:120]!r}")
        if event.get("error"):
            raise _Failed(f"error in stream: {str(event['error'])[:300]}")
        text = ""
        for choice in event.get("choices") or []:
            if self.endpoint is Endpoint.chat:
                text += (choice.get("delta") or {}).get("content") or ""
            else:
                text += choice.get("text") or ""
            r.finish_reason = choice.get("finish_reason") or r.finish_reason
        return text, event.get("usage")
