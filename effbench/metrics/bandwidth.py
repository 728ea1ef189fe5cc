"""Memory bandwidth and MBU (docs/spec.md §2 compute).

Bandwidth: a GPU's datasheet figure (source `analytic`); on a CPU, or a GPU not in the table, a
STREAM-style copy and triad over arrays much larger than the last-level cache (source `timer`).
MBU: the bytes a decode must read (weights and KV cache, by `decode_bytes_moved`) over the decode
time, as a fraction of that bandwidth.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from effbench.hardware import last_level_cache_bytes, synchronize
from effbench.metrics.catalog import from_samples, make_metric
from effbench.metrics.gpu_datasheets import datasheet
from effbench.metrics.probe_cache import cached, device_key, others_load, quiet
from effbench.metrics.record import Metric, Source

MiB = 1024**2
_ELEMENT = 4  # fp32 arrays, as STREAM's


@dataclass(frozen=True)
class Bandwidth:
    bytes_per_s: float
    source: Source
    note: str


# STREAM's accounting: bytes per element each kernel names (read and written arrays), with no
# write-allocate traffic: a store to an uncached line first reads it (read-for-ownership) unless the
# kernel uses non-temporal stores, so DRAM may move up to one more array than counted here.
STREAM_ARRAYS = {"copy": 2, "triad": 3}


def stream_bytes(kernel: str, elements: int) -> int:
    return STREAM_ARRAYS[kernel] * elements * _ELEMENT


def default_array_bytes(device: torch.device) -> int:
    """STREAM's rule: each array at least 4× the largest cache, so repeats come from memory."""
    if device.type == "cuda":
        cache = torch.cuda.get_device_properties(device).L2_cache_size
    else:
        cache = last_level_cache_bytes() or 64 * MiB
    return max(4 * cache, 64 * MiB)


def stream_probe(device: torch.device, array_bytes: int, budget_s: float = 0.6) -> dict:
    """Best time of copy (c = a) and triad (a = b + q·c) over fp32 arrays of `array_bytes` each."""
    n = array_bytes // _ELEMENT
    a = torch.full((n,), 1.0, device=device)  # filled: every page is touched before timing
    b = torch.full((n,), 2.0, device=device)
    c = torch.zeros(n, device=device)
    kernels = {"copy": lambda: c.copy_(a), "triad": lambda: torch.add(b, c, alpha=3.0, out=a)}
    for run in kernels.values():
        run()
    best = dict.fromkeys(kernels, float("inf"))
    deadline = time.perf_counter() + budget_s
    with others_load(device) as load:
        while time.perf_counter() < deadline or best["triad"] == float("inf"):
            for name, run in kernels.items():
                synchronize(device)
                t0 = time.perf_counter()
                run()
                synchronize(device)
                best[name] = min(best[name], time.perf_counter() - t0)
    return {"array_bytes": n * _ELEMENT, "others_load": load.others,
            **{name: {"bytes": stream_bytes(name, n), "best_s": best[name]} for name in kernels}}


def memory_bandwidth(device: torch.device, array_bytes: int | None = None, budget_s: float = 0.6) -> Bandwidth:
    """The device's memory bandwidth: datasheet for a known GPU, else the STREAM probe (cached per
    device, threads, array size and torch version). `array_bytes` sizes the probe's arrays, e.g. to
    a workload's working set when it fits in cache; default 4× the last-level cache."""
    if device.type == "cuda":
        sheet = datasheet(torch.cuda.get_device_name(device))
        if sheet is not None:
            return Bandwidth(sheet.bytes_per_s, Source.ANALYTIC,
                             f"datasheet memory bandwidth of {sheet.label} ({sheet.source})")
    size = array_bytes or default_array_bytes(device)
    threads = torch.get_num_threads()
    key = {"probe": "stream", **device_key(device), "threads": threads, "array_bytes": size,
           "torch": torch.__version__, "budget_s": budget_s}
    got = cached(key, lambda: stream_probe(device, size, budget_s), keep=quiet)
    rates = {k: got.value[k]["bytes"] / got.value[k]["best_s"] for k in STREAM_ARRAYS}
    kernel = max(rates, key=rates.get)
    cache = last_level_cache_bytes() if device.type == "cpu" else None
    of_cache = f", {size / cache:.0f}× the {cache / MiB:.0f} MiB last-level cache" if cache else ""
    note = (f"STREAM-style probe on {threads} threads, the larger of copy (c = a) {rates['copy'] / 1e9:.1f} GB/s "
            f"and triad (a = b + q·c) {rates['triad'] / 1e9:.1f} GB/s; fp32 arrays of {size / MiB:.0f} MiB "
            f"each{of_cache}; best repeat over {budget_s} s; bytes counted as STREAM does (copy 2, triad 3 "
            f"arrays per element), write-allocate traffic not counted{_load_note(got.value)} ({got.note()})")
    return Bandwidth(rates[kernel], Source.TIMER, note)


def _load_note(value: dict) -> str:
    others = value.get("others_load")
    return "" if others is None else f"; other processes took {others:.0%} of the cores meanwhile"


def decode_bytes_per_step(weight_bytes: float, kv_bytes_per_token: float, batch: int, context_tokens: int) -> float:
    """Bytes one decode step reads: every weight once (shared by the batch) and, per sequence, the
    KV cache of the `context_tokens` positions its attention reads."""
    return weight_bytes + batch * context_tokens * kv_bytes_per_token


def decode_bytes_moved(weight_bytes: float, kv_bytes_per_token: float, batch: int, prompt_tokens: int,
                       output_tokens: int) -> float:
    """Bytes read by the decode steps of one `generate()` of `output_tokens` tokens.

    The model: prefill is one pass over the prompt, and it yields the first token, which is why that
    token belongs to prefill (TTFT) and not to decode, as in `throughput.decode_tokens_per_s` and TPOT.
    A decode step is one forward pass that consumes the last generated token and yields the next, so
    there are `output_tokens − 1` of them. Step s (1 ≤ s ≤ output_tokens − 1) reads all weights once
    and, for each of the `batch` sequences, the K/V of its context at that step: the prompt and the s
    generated tokens up to the one it consumes (attention reads that token's own K/V too), i.e.
    `prompt_tokens + s` positions. Summed over the steps.

    Not counted: the K/V the step writes, activations, the embedding-row lookup and sampling, small
    beside weights and cache at decode batch sizes. `weight_bytes` are the weights a step reads: every
    linear layer and the LM head (for MoE, the active experts only).
    """
    return sum(decode_bytes_per_step(weight_bytes, kv_bytes_per_token, batch, prompt_tokens + s)
               for s in range(1, output_tokens))


def mbu(bytes_moved: float, decode_seconds: float, bandwidth: Bandwidth) -> float:
    """Memory-bandwidth utilization: achieved bytes/s of the decode ÷ the bandwidth."""
    if decode_seconds <= 0:
        raise ValueError(f"decode time must be positive, got {decode_seconds} s")
    return bytes_moved / decode_seconds / bandwidth.bytes_per_s


def bandwidth_metric(bandwidth: Bandwidth) -> Metric:
    return make_metric("compute.memory_bandwidth_bytes_per_s", bandwidth.bytes_per_s, bandwidth.source,
                       note=bandwidth.note)


def decode_memory_metrics(weight_bytes: float, kv_bytes_per_token: float, batch: int, prompt_tokens: int,
                          output_tokens: int, decode_seconds: Sequence[float], bandwidth: Bandwidth) -> list[Metric]:
    """compute.decode_bytes_moved and compute.bytes_moved (per generate(), the bytes model in the
    note) and compute.mbu per repeat: decode bytes ÷ that repeat's decode time ÷ bandwidth."""
    moved = decode_bytes_moved(weight_bytes, kv_bytes_per_token, batch, prompt_tokens, output_tokens)
    model = (f"Σ over {output_tokens - 1} decode steps of weights {weight_bytes:.4g} B + {batch} × (prompt "
             f"{prompt_tokens} + step) × {kv_bytes_per_token:.4g} B/token KV")
    return [
        make_metric("compute.decode_bytes_moved", moved, Source.ANALYTIC, note=model),
        make_metric("compute.bytes_moved", weight_bytes + moved, Source.ANALYTIC,
                    note=f"prefill reads the weights once ({weight_bytes:.4g} B) + decode: {model}"),
        from_samples("compute.mbu", [mbu(moved, s, bandwidth) for s in decode_seconds], Source.TIMER,
                     f"{moved:.4g} B decode bytes ÷ decode time (e2e − TTFT) ÷ {bandwidth.bytes_per_s / 1e9:.1f} GB/s "
                     f"({bandwidth.note})"),
    ]
