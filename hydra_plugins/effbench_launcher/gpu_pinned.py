"""`hydra/launcher=gpu_pinned`: a multi-GPU node without SLURM, one GPU per job;
and `hydra/launcher=isolated`: one job at a time, each in a fresh process.

Each job runs in a fresh process (submitit's local executor) whose
CUDA_VISIBLE_DEVICES names one GPU of a pool; a GPU takes its next job only when
its current one has ended, so no two measuring jobs share a device (unless
`jobs_per_gpu` > 1 with `allow_shared_gpu=true`). A fresh process per job
matters: CUDA reads CUDA_VISIBLE_DEVICES once, when a process first touches it,
so a reused worker (joblib's) cannot be moved to another GPU.

    effbench run --multirun hydra/launcher=gpu_pinned technique=fp32,bf16,fp16,int8 model=...
    effbench run --multirun hydra/launcher=gpu_pinned hydra.launcher.gpus=[0,1] ...

Options (besides submitit's local ones: timeout_min, submitit_folder, ...):
  gpus: null = all visible (CUDA_VISIBLE_DEVICES, else nvidia-smi), or a list of indices
  jobs_per_gpu: 1; more is refused unless allow_shared_gpu=true (see effbench.device_pinning)

`isolated` runs the same queue with one slot that sees every device: a sweep in
one long-lived process (Hydra's basic launcher) leaves each pair's imports,
allocator pools and caches resident for the next, so on a CPU a later pair's
peak RSS includes what the pairs before it left. A fresh process per job keeps
each run's process memory its own, at the cost of a few seconds of start-up.

    effbench run --multirun hydra/launcher=isolated technique=fp32,bnb-nf4,quanto-qint4 ...
"""

# No `from __future__ import annotations`: Hydra execs plugin modules before they are in
# sys.modules, and dataclasses then cannot resolve string annotations.
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra.errors import HydraException
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

from effbench.device_pinning import (ENV_ALLOW_SHARED, ENV_JOBS_PER_DEVICE, ENV_PINNED_GPU, SharedDeviceError,
                                     detect_gpus, plan_slots)

log = logging.getLogger(__name__)

_OWN_KEYS = ("gpus", "jobs_per_gpu", "allow_shared_gpu")
_POLL_S = 0.05


@dataclass
class GpuPinnedLauncherConf(LocalQueueConf):
    _target_: str = "hydra_plugins.effbench_launcher.gpu_pinned.GpuPinnedLauncher"
    # null: every GPU this process may use; or a list of device indices
    gpus: Optional[List[int]] = None
    # concurrent jobs per GPU; > 1 is refused unless allow_shared_gpu
    jobs_per_gpu: int = 1
    allow_shared_gpu: bool = False


@dataclass
class IsolatedLauncherConf(LocalQueueConf):
    _target_: str = "hydra_plugins.effbench_launcher.gpu_pinned.IsolatedLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="gpu_pinned", node=GpuPinnedLauncherConf,
                             provider="effbench")
ConfigStore.instance().store(group="hydra/launcher", name="isolated", node=IsolatedLauncherConf, provider="effbench")


class GpuPinnedLauncher(BaseSubmititLauncher):
    _EXECUTOR = "local"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.gpus = self.params.pop("gpus", None)
        self.jobs_per_gpu = int(self.params.pop("jobs_per_gpu", 1))
        self.allow_shared_gpu = bool(self.params.pop("allow_shared_gpu", False))

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        # In the job's own process: submitit's controller has set CUDA_VISIBLE_DEVICES.
        os.environ[ENV_PINNED_GPU] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        os.environ[ENV_JOBS_PER_DEVICE] = str(self.jobs_per_gpu)
        if self.allow_shared_gpu:
            os.environ[ENV_ALLOW_SHARED] = "1"
        return super().__call__(*args, **kwargs)

    def slots(self) -> List[Tuple[int, ...]]:
        """The GPUs each parallel slot's jobs see; one job per slot at a time."""
        gpus = list(self.gpus) if self.gpus is not None else detect_gpus()
        try:
            return [(g,) for g in plan_slots(gpus, self.jobs_per_gpu, self.allow_shared_gpu)]
        except SharedDeviceError as e:
            raise HydraException(f"hydra/launcher=gpu_pinned: {e}") from None

    def _executor(self, slot: Tuple[int, ...]):
        import submitit

        executor = submitit.LocalExecutor(folder=self.params["submitit_folder"])
        params = {k: v for k, v in self.params.items() if k not in ("submitit_folder", "gpus_per_node")}
        executor.update_parameters(**params, gpus_per_node=len(slot), visible_gpus=slot)
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        # Jobs inherit this environment. One hash seed for all of them: with random
        # seeds a small model's per-token latency varied 12% between processes, with
        # one 6% (docs/results/gate_power.md). An explicit PYTHONHASHSEED wins.
        os.environ.setdefault("PYTHONHASHSEED", "0")
        slots = self.slots()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"{type(self).__name__}: {len(job_overrides)} jobs, {len(slots)} at a time, each in a fresh process; "
                 f"sweep output dir: {sweep_dir}")
        todo: queue.Queue = queue.Queue()
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            todo.put((i, (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())))
        results: List[Optional[JobReturn]] = [None] * len(job_overrides)
        errors: List[BaseException] = []

        def worker(slot: Tuple[int, ...]) -> None:
            executor = self._executor(slot)
            while True:
                try:
                    i, params = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    job = executor.submit(self, *params)
                    where = f"GPUs {list(slot)}" if slot else "no GPU"
                    log.info(f"\t#{params[2]} started ({where}, submitit job {job.job_id}, log {job.paths.stdout})")
                    started = time.perf_counter()
                    while not job.done():  # submitit's own wait() checks once a second: up to 1 s lost per job
                        time.sleep(_POLL_S)
                    results[i] = job.results()[0]
                    log.info(f"\t#{params[2]} ended after {time.perf_counter() - started:.0f} s "
                             f"({sum(r is not None for r in results)} of {len(job_overrides)} done)")
                except BaseException as e:  # a killed or crashed job: the others go on; raised at the end
                    errors.append(e)

        threads = [threading.Thread(target=worker, args=(slot,), name=f"slot{i}", daemon=True)
                   for i, slot in enumerate(slots)]
        with _jobs_end_with_the_sweep(todo):
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():  # a timed join: the main thread stays free to take a signal
                    t.join(0.5)
        if errors:
            raise errors[0]
        return [r for r in results if r is not None]


class _SweepTerminated(BaseException):
    pass


class _jobs_end_with_the_sweep:
    """A sweep stopped by SIGTERM (`kill`, a CI or SLURM time limit) or Ctrl-C takes its
    running jobs with it: their processes are this one's descendants, and a job left
    running on its own would measure beside whatever the machine does next. Pending jobs
    are dropped; records already written stay."""

    def __init__(self, todo: queue.Queue) -> None:
        self.todo = todo
        self.previous: Any = None

    def __enter__(self) -> "_jobs_end_with_the_sweep":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._terminated)
        return self

    @staticmethod
    def _terminated(signum: int, frame: Any) -> None:
        raise _SweepTerminated()

    def __exit__(self, kind: Any, value: Any, tb: Any) -> bool:
        import psutil

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        if kind is None:
            return False
        while not self.todo.empty():
            self.todo.get_nowait()
        children = psutil.Process().children(recursive=True)
        for child in children:
            child.terminate()
        # submitit's job process ignores SIGTERM (on SLURM it means "preemption coming"): kill what
        # is left. Its record is not half-written: stores write a record whole or not at all.
        _, alive = psutil.wait_procs(children, timeout=3)
        for child in alive:
            child.kill()
        psutil.wait_procs(alive, timeout=10)
        log.error(f"sweep stopped ({'SIGTERM' if kind is _SweepTerminated else kind.__name__}): "
                  f"{len(children)} job process(es) terminated, pending jobs dropped")
        if kind is _SweepTerminated:
            raise SystemExit(128 + signal.SIGTERM)
        return False


class IsolatedLauncher(GpuPinnedLauncher):
    """One job at a time, each in a fresh process that sees every GPU (none on a CPU machine)."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        return BaseSubmititLauncher.__call__(self, *args, **kwargs)  # nothing pinned

    def slots(self) -> List[Tuple[int, ...]]:
        return [tuple(detect_gpus())]
