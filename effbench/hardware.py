"""What the run executed on: device choice, synchronisation, and the hardware /
software description stored with every run (docs/spec.md §4)."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from dataclasses import dataclass
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


def cpu_physical_cores() -> int:
    """Physical cores under this process's affinity: SMT siblings share one core's vector units,
    so a peak counts cores, not logical CPUs. Falls back to the logical count without sysfs topology."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(cpu_cores())
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            return cpu_cores()
    return len(cores)


@cache
def cpu_signature() -> str:
    """Short hash of the first /proc/cpuinfo block (brand, family, model, stepping, flags) without the
    moving clock line: two hosts that answer alike run the same derivation, so probes cached on one
    serve the other, and a change of any of these invalidates them."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
        text = "\n".join(line for line in block.splitlines() if not line.startswith("cpu MHz"))
    except OSError:
        text = f"{platform.processor()}|{platform.machine()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CpuDescription:
    """What a CPU peak derivation needs, read by py-cpuinfo (CPUID on x86)."""

    arch: str  # py-cpuinfo's arch, e.g. "X86_64", "ARM_8"
    vendor: str  # CPUID vendor id, e.g. "AuthenticAMD", "GenuineIntel"
    family: int
    model: int
    brand: str
    flags: tuple[str, ...]
    nominal_hz: float  # py-cpuinfo hz_advertised: the clock in the brand string, else the kernel's "cpu MHz"

    @classmethod
    def read(cls) -> CpuDescription:
        import cpuinfo  # slow (runs CPUID in a child process): callers cache the result

        info = cpuinfo.get_cpu_info()
        if not info.get("arch"):
            raise RuntimeError("py-cpuinfo returned no CPU description")
        return cls(arch=info["arch"], vendor=info.get("vendor_id_raw", ""), family=int(info.get("family", 0)),
                   model=int(info.get("model", 0)), brand=info.get("brand_raw", ""),
                   flags=tuple(sorted(info.get("flags", []))), nominal_hz=float(info.get("hz_advertised", [0])[0]))


@dataclass(frozen=True)
class CpufreqLimit:
    """The kernel's cpufreq ceiling, and whether it can be trusted as the maximum clock."""

    hz: float
    driver: str
    boost_beyond: bool  # acpi-cpufreq with boost on reports the base clock: the CPU runs above it


def cpufreq_limit() -> CpufreqLimit | None:
    """psutil's max frequency (cpufreq scaling_max_freq); None where the kernel exposes no cpufreq (VMs)."""
    freq = psutil.cpu_freq()
    if not freq or not freq.max:
        return None
    driver = _read_sysfs("/sys/devices/system/cpu/cpu0/cpufreq/scaling_driver")
    boost = _read_sysfs("/sys/devices/system/cpu/cpufreq/boost") == "1"
    return CpufreqLimit(freq.max * 1e6, driver, boost and driver == "acpi-cpufreq")


def last_level_cache_bytes() -> int | None:
    """Size of the highest cache level seen by cpu0 (sysfs); None where the kernel does not say."""
    best_level, size = 0, None
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        level, text = _read_sysfs(index / "level"), _read_sysfs(index / "size")
        if level.isdigit() and text[:-1].isdigit() and int(level) >= best_level:
            scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1], 1)
            best_level, size = int(level), int(text[:-1]) * scale
    return size


def _read_sysfs(path) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


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
    """Short name used to group runs (docs/spec.md §3 peer groups)."""
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
