"""What the run executed on: device choice, synchronisation, and the hardware /
software description stored with every run (SPEC §4)."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

import psutil
import torch


def resolve_device(requested: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"hardware.device={requested} but torch sees no CUDA device; use hardware.device=cpu or auto")
    return torch.device(requested)


def synchronize(device: torch.device) -> None:
    """Window edges must wait for queued GPU work, or timings measure launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_cores() -> int:
    """Cores this process may run on (affinity), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_hardware(device: torch.device) -> dict:
    info = {
        "device_type": device.type,
        "cpu_model": cpu_model(),
        "cpu_cores": cpu_cores(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        idx = device.index or 0
        props = torch.cuda.get_device_properties(idx)
        info.update(
            gpu_name=props.name,
            gpu_count=torch.cuda.device_count(),
            gpu_memory_bytes=props.total_memory,
            cuda_version=torch.version.cuda,
            driver_version=_nvidia_driver(),
        )
    return info


def hardware_label(info: dict) -> str:
    """Short name used to group runs (SPEC §3 peer groups)."""
    if info["device_type"] == "cuda":
        return f"{info['gpu_name']} x{info.get('gpu_count', 1)}"
    return f"CPU {info['cpu_model']} ({info['cpu_cores']} cores)"


def _nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # no NVML: the run still describes what it can
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@cache
def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def describe_software() -> dict:
    return {
        "python": platform.python_version(),
        # fixed seeds make processes hash (and time) alike; see docs/results/gate_power.md
        "python_hash_seed": os.environ.get("PYTHONHASHSEED", "random"),
        **{name: _version(name) for name in ("torch", "transformers", "peft", "effbench", "codecarbon")},
        "effbench_commit": _git_commit(),
    }
