"""One GPU per sweep job: which job gets which device, and when a sweep would
put two measuring jobs on one device.

Two jobs on one GPU share its SMs, memory bandwidth, L2 cache, power budget and
clocks: each job's latency, throughput, energy and utilisation figures then
include the other's load, and depend on how their kernels happened to overlap.
So effbench refuses it unless told otherwise:

- the `gpu_pinned` launcher (hydra_plugins.effbench_launcher) runs each job in a
  fresh process with CUDA_VISIBLE_DEVICES set to one GPU from a pool, at most
  `jobs_per_gpu` (default 1) jobs per GPU at a time;
- `effbench.execute` calls `device_sharing_problem` before measuring, which
  catches the launchers that would share a device (joblib with n_jobs ≠ 1,
  submitit's local executor with GPUs, or gpu_pinned forced to share).

Set EFFBENCH_ALLOW_SHARED_DEVICE=1 (or `hydra.launcher.allow_shared_gpu=true`)
to run anyway; the run's hardware record then says the device was shared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

# Set in each job by the gpu_pinned launcher.
ENV_JOBS_PER_DEVICE = "EFFBENCH_JOBS_PER_DEVICE"
ENV_PINNED_GPU = "EFFBENCH_PINNED_GPU"
# Set by the user (or by gpu_pinned's allow_shared_gpu) to allow sharing.
ENV_ALLOW_SHARED = "EFFBENCH_ALLOW_SHARED_DEVICE"

WHY = ("parallel jobs on one GPU share its compute, memory bandwidth, cache and power budget, so every "
       "latency, throughput and energy figure would include the other jobs' load")


class SharedDeviceError(ValueError):
    """A sweep that would run more than one measuring job per device."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def gpus_from_env(env: Mapping[str, str] | None = None) -> list[int] | None:
    """Device indices in CUDA_VISIBLE_DEVICES, [] if it hides every GPU, None if unset.
    GPU UUIDs (GPU-...) cannot be pinned by index: they raise."""
    env = os.environ if env is None else env
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    items = [x.strip() for x in value.split(",") if x.strip()]
    try:
        return [int(x) for x in items]
    except ValueError:
        raise SharedDeviceError(f"CUDA_VISIBLE_DEVICES={value!r} names devices by UUID; pass "
                                "hydra.launcher.gpus=[0,1,...] to say which indices to pin jobs to") from None


def detect_gpus() -> list[int]:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`,
    else torch's count (which initialises CUDA here, in the launcher, not in a job)."""
    from_env = gpus_from_env()
    if from_env is not None:
        return from_env
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                return [i for i, line in enumerate(l for l in out.stdout.splitlines() if l.startswith("GPU "))]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except ImportError:
        return []


def plan_slots(gpus: list[int], jobs_per_gpu: int = 1, allow_shared: bool = False) -> list[int]:
    """The GPU of each parallel slot: jobs run one per slot at a time, so a GPU
    appearing k times hosts k concurrent jobs. Refuses k > 1 unless allowed."""
    if not gpus:
        raise SharedDeviceError("no GPUs to pin jobs to (none visible): set hydra.launcher.gpus=[0,1,...], or on a "
                                "CPU machine use hydra/launcher=basic (one job at a time)")
    if len(set(gpus)) != len(gpus):
        dup = sorted({g for g in gpus if gpus.count(g) > 1})
        raise SharedDeviceError(f"hydra.launcher.gpus lists GPU {', '.join(map(str, dup))} twice; list each once "
                                "and use jobs_per_gpu for more than one job per GPU")
    if jobs_per_gpu < 1:
        raise SharedDeviceError(f"jobs_per_gpu must be ≥ 1, got {jobs_per_gpu}")
    if jobs_per_gpu > 1 and not allow_shared:
        raise SharedDeviceError(f"jobs_per_gpu={jobs_per_gpu} would run {jobs_per_gpu} jobs at once on each GPU: "
                                f"{WHY}. Use jobs_per_gpu=1, or set hydra.launcher.allow_shared_gpu=true to run "
                                "anyway (the runs are then marked as measured on a shared device)")
    # Round-robin over GPUs first, so a partly filled pool still spreads out.
    return [g for _ in range(jobs_per_gpu) for g in gpus]


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    try:
        value = cfg.get(key, default)
    except AttributeError:
        value = getattr(cfg, key, default)
    return default if value is None else value


def jobs_sharing_device(launcher: Any, env: Mapping[str, str] | None = None,
                        cpu_count: int | None = None) -> tuple[int, str]:
    """How many jobs of this sweep may measure on one GPU at once, and why.

    `launcher` is the job's hydra.launcher config (None outside Hydra). 1 means
    exclusive; 0 means the launcher is not known (no check)."""
    env = os.environ if env is None else env
    if ENV_JOBS_PER_DEVICE in env:  # the gpu_pinned launcher says
        n = int(env[ENV_JOBS_PER_DEVICE])
        return n, f"hydra/launcher=gpu_pinned with jobs_per_gpu={n}"
    target = str(_get(launcher, "_target_", ""))
    if not target or target.endswith(("BasicLauncher", "IsolatedLauncher", "SlurmLauncher")):
        # One job at a time, or SLURM's own GPU allocation (gpus_per_task) per job.
        return 1, "one job per device"
    if target.endswith("JoblibLauncher"):
        n_jobs = int(_get(launcher, "n_jobs", -1))
        n = (cpu_count or os.cpu_count() or 1) if n_jobs < 0 else n_jobs
        return max(n, 1), f"hydra/launcher=joblib with n_jobs={n_jobs} runs {n} jobs at once, all on the same GPU"
    if target.endswith("LocalLauncher"):  # submitit's (hydra/launcher=local)
        if int(_get(launcher, "gpus_per_node", 0)) < 1:
            return 1, "submitit local without GPUs"
        return 2, ("hydra/launcher=submitit_local (or local) starts every job of the sweep at once, each seeing the "
                   "same GPUs")
    return 0, f"unknown launcher {target}"


def device_sharing_problem(device_type: str, launcher: Any, env: Mapping[str, str] | None = None,
                           cpu_count: int | None = None) -> tuple[str | None, dict[str, Any]]:
    """(refusal message or None, facts for the run's hardware record).

    Only GPU runs are checked: CPU jobs of a parallel sweep share cores too, but
    that is visible in their recorded torch_threads and cpu_cores."""
    env = os.environ if env is None else env
    facts: dict[str, Any] = {}
    if ENV_PINNED_GPU in env:
        facts["pinned_gpu"] = env[ENV_PINNED_GPU]
    if device_type != "cuda":
        return None, facts
    n, why = jobs_sharing_device(launcher, env, cpu_count)
    if n <= 1:
        return None, facts
    if _truthy(env.get(ENV_ALLOW_SHARED)):
        facts["shared_device_jobs"] = n
        return None, facts
    return (f"refusing to measure: {why}; {WHY}. Use hydra/launcher=gpu_pinned (one job per GPU), "
            f"hydra/launcher=basic (one job at a time) or SLURM, or set {ENV_ALLOW_SHARED}=1 to run anyway "
            "(the runs are then marked as measured on a shared device)"), facts


def check_current_job(device_type: str) -> dict[str, Any]:
    """The check `effbench.execute` makes before measuring: raises SharedDeviceError
    when this Hydra job's launcher runs parallel jobs on one GPU (unless
    allowed); returns facts for the run's hardware record."""
    launcher = None
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            launcher = HydraConfig.get().launcher
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    problem, facts = device_sharing_problem(device_type, launcher)
    if problem:
        raise SharedDeviceError(problem)
    return facts
