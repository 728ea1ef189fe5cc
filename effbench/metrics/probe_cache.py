"""Results of the start-up probes (CPU description, achievable peak, memory bandwidth), kept
between processes in one JSON file so that every benchmark process on a machine does not pay for
them again.

An entry is found by its whole key: whatever the probe's result depends on (CPU signature, threads,
dtype, shapes, torch version) goes into the key, so a change of any of them measures afresh. The file
is `probes.json` in effbench.cache.cache_root() ($EFFBENCH_CACHE, default ~/.cache/effbench), replaced atomically;
two processes writing at once can drop one's new entry, which is then measured again next time.
A timed CPU probe that other processes disturbed is used once but not kept (`others_load`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil
import torch

from effbench.cache import cache_root
from effbench.hardware import cpu_model, cpu_signature

_VERSION = 1


def cache_path() -> Path:
    return cache_root() / "probes.json"


@dataclass(frozen=True)
class Probed:
    value: dict
    measured_at: str  # ISO 8601, UTC
    reused: bool
    kept: bool = True

    def note(self) -> str:
        if self.reused:
            return f"cached, measured {self.measured_at}"
        return f"measured {self.measured_at}" + ("" if self.kept else ", not cached: the machine was busy")


def cached(key: dict, measure: Callable[[], dict], keep: Callable[[dict], bool] = lambda value: True) -> Probed:
    """The stored result for `key`, or `measure()`, stored under it when `keep(result)`. JSON only."""
    canonical = json.dumps(key, sort_keys=True)
    hit = _load().get(canonical)
    if hit is not None:
        return Probed(hit["value"], hit["measured_at"], reused=True)
    value = measure()
    measured_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    kept = keep(value)
    if kept:
        _store(canonical, {"key": key, "value": value, "measured_at": measured_at})
    return Probed(value, measured_at, reused=False, kept=kept)


def device_key(device: torch.device) -> dict:
    """The part of a probe's key that names the device it ran on."""
    if device.type == "cuda":
        return {"device": torch.cuda.get_device_name(device)}
    return {"device": device.type, "cpu": cpu_model(), "signature": cpu_signature()}


@dataclass
class Load:
    others: float | None = None  # share of this process's cores other processes (or VMs) took


@contextmanager
def others_load(device: torch.device) -> Iterator[Load]:
    """How much of this process's cores others used during the block: their busy time (steal
    included) minus ours, over wall × cores, from the kernel's tick counters. None off the CPU."""
    load = Load()
    if device.type != "cpu" or not hasattr(os, "sched_getaffinity"):
        yield load
        return
    cpus = sorted(os.sched_getaffinity(0))

    def busy() -> float:
        per_cpu = psutil.cpu_times(percpu=True)
        return sum(per_cpu[i].user + per_cpu[i].nice + per_cpu[i].system + getattr(per_cpu[i], "irq", 0)
                   + getattr(per_cpu[i], "softirq", 0) + getattr(per_cpu[i], "steal", 0) for i in cpus)

    wall0, busy0, own0 = time.perf_counter(), busy(), time.process_time()
    try:
        yield load
    finally:
        own, total = time.process_time() - own0, busy() - busy0
        load.others = max(0.0, total - own) / ((time.perf_counter() - wall0) * len(cpus))


def quiet(value: dict) -> bool:
    """Keep a probe result only when others took under 10% of its cores (the ticks' resolution)."""
    return value.get("others_load") is None or value["others_load"] < 0.1


def _load() -> dict:
    path = cache_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:  # a cache never stops a run: measure again and rewrite it
        warnings.warn(f"probe cache {path} unreadable ({e}); probes are measured again", stacklevel=3)
        return {}
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        return {}
    return data.get("entries", {})


def _store(canonical: str, entry: dict) -> None:
    path = cache_path()
    entries = _load()  # re-read: another process may have added entries since
    entries[canonical] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".probes.", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": _VERSION, "entries": entries}, f, indent=1)
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; colleagues sharing results/ may read it
            os.replace(tmp, path)  # readers see the old file or the new one, never half of one
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        warnings.warn(f"probe cache {path} not written ({e}); the probe runs again next time", stacklevel=3)
