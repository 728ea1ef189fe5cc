"""The stored figures of loads: what every load gives (its duration and
arrival schedule, the steady-state window), and over HTTP the serving figures
of metrics.serving (failed requests counted against goodput and attainment),
the error rate, the latency family over the answered requests, per-request
phases, what the server counted, and the failed requests with their errors."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from effbench.metrics.catalog import from_samples
from effbench.metrics.latency import latency_metrics
from effbench.metrics.record import Metric, Source
from effbench.metrics.serving import ServedLoad, serving_metrics
from effbench.serving.http_load import HttpLoadResult
from effbench.serving.steady import steady_window


def http_serving_metrics(runs: list[HttpLoadResult], slos: dict[str, float | None], profile: str,
                         steady_joules: list[tuple[float, str] | None] | None = None) -> list[Metric]:
    """Figures of `runs` (one per repeat). steady_joules[i]: the server's energy
    over run i's steady window and how it was read (steady_energy), None where
    not measured."""
    answered = [r for run in runs for r in run.completed]
    timing = "per answered request, over HTTP: chunk arrival times (a chunk's gap split over its tokens)"
    out = [
        *serving_metrics(runs, slos, profile),
        from_samples("serve.error_rate", [run.error_rate for run in runs], Source.TIMER,
                     "requests that failed / requests sent, one sample per repeat"),
        from_samples("serve.send_lag_s", [r.sent - r.arrival for run in runs for r in run.results], Source.TIMER,
                     "per request: send − scheduled arrival"),
    ]
    if answered:
        timings = [r.timing() for r in answered]
        sources = sorted({r.token_source for r in answered})
        out += [
            *latency_metrics(timings, how=f"{timing}; TTFT and e2e from the scheduled arrival (queueing and client "
                                          f"lag included); tokens: {' | '.join(sources)}"),
            from_samples("serve.request_output_tokens", [r.output_tokens for r in answered], Source.ANALYTIC,
                         f"{' | '.join(sources)}; max_tokens asked {sorted({r.max_tokens for r in answered})}"),
            from_samples("serve.request_decode_tokens_per_s",
                         [(t.steps - 1) / (t.e2e - t.ttft) for t in timings if t.e2e > t.ttft], Source.TIMER,
                         f"{timing}; (tokens − 1) / (e2e − TTFT)"),
        ]
        counted = [(r, r.server_prompt_tokens) for r in answered if r.server_prompt_tokens is not None]
        if counted:
            expected = {r.prompt_tokens for r, _ in counted}
            out += [
                from_samples("serve.request_prompt_tokens", [n for _, n in counted], Source.ANALYTIC,
                             f"usage.prompt_tokens; the client intended {sorted(expected)}"),
                from_samples("serve.request_prefill_tokens_per_s", [n / r.timing().ttft for r, n in counted],
                             Source.TIMER, f"{timing}; usage.prompt_tokens / TTFT (queueing included)"),
            ]
    out += [*load_metrics(runs), *steady_metrics(runs, steady_joules)]
    return out


def load_metrics(runs: list[ServedLoad]) -> list[Metric]:
    """Each repeat's duration (the rates' denominator) and every request's scheduled arrival."""
    return [
        from_samples("serve.load_duration_s", [run.duration_s for run in runs], Source.TIMER,
                     "first scheduled arrival to the last answer or failure, one sample per repeat"),
        from_samples("serve.request_arrival_s", [a for run in runs for a in run.arrivals], Source.TIMER,
                     "per request sent, in send order, repeat after repeat: scheduled arrival − the load's start"),
    ]


def failed_requests(runs: list[HttpLoadResult], limit: int = 200) -> tuple[list[dict], str | None]:
    """The failed requests as stored on the record (the first `limit`), and a
    one-line summary of them (None when every request was answered)."""
    failed = [(i, r) for i, run in enumerate(runs) for r in run.failed]
    if not failed:
        return [], None
    rows = [{"repeat": i, "index": r.index, "error": r.error, "http_status": r.status,
             "seconds_after_send": round(r.done - r.sent, 6)} for i, r in failed[:limit]]
    kinds = Counter(r.error.split(":")[0] for _, r in failed)
    sent = sum(len(run.results) for run in runs)
    summary = (f"{len(failed)} of {sent} requests failed ({', '.join(f'{k} ×{n}' for k, n in kinds.most_common())}); "
               f"they count against goodput and SLO attainment, and are listed in provenance.failed_requests"
               f"{f' (the first {limit})' if len(failed) > limit else ''}")
    return rows, summary


def steady_energy(run: HttpLoadResult, energy_between: Callable[[float, float], tuple[float, str] | None]
                  ) -> tuple[float, str] | None:
    """The server's energy over the run's steady window and how it was read
    (ServerCostTracker.energy_between); call right after the run's window,
    while the tracker still holds its samples."""
    window = steady_window(run.requests)
    return None if window is None else energy_between(window.start, window.end)


def steady_metrics(runs: list[ServedLoad], steady_joules: list[tuple[float, str] | None] | None = None
                   ) -> list[Metric]:
    """Figures over each run's steady-state window (steady.py); the energy ones
    where steady_joules[i] holds the server's energy over run i's window."""
    windows = [steady_window(run.requests) for run in runs]
    found = [(i, w) for i, w in enumerate(windows) if w is not None]
    if not found:
        return []
    how = (f"steady state: from the first full batch (peak {max(w.peak_running for _, w in found)} requests between "
           f"first and last token) to the first completion after the last first token; {len(found)} of "
           f"{len(runs)} repeats had one")
    out = [
        from_samples("serve.steady_output_tokens_per_s", [w.tokens_per_s for _, w in found], Source.TIMER, how),
        from_samples("serve.steady_window_s", [w.duration_s for _, w in found], Source.TIMER, how),
        from_samples("serve.steady_running", [w.mean_running for _, w in found], Source.TIMER, how),
    ]
    read = [(steady_joules[i], w) for i, w in found if steady_joules and steady_joules[i] is not None and w.tokens]
    if read:
        methods = sorted({energy_how for (_, energy_how), _ in read})
        source = Source.COUNTER if all("counter" in m for m in methods) else Source.SAMPLED
        out.append(from_samples("energy.steady_joules_per_token", [j / w.tokens for (j, _), w in read], source,
                                f"{' | '.join(methods)}; {how}"))
    return out
