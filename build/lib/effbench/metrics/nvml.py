"""Thin NVML access; `open` returns None where NVML is missing (CPU machines).
A device's handle is opened once per process and shared by every tracker."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch


@dataclass
class NvmlDevice:
    handle: object

    @classmethod
    def open(cls, device: torch.device) -> NvmlDevice | None:
        if device.type != "cuda":
            return None
        return _open_index(device.index or 0)

    def memory_used(self) -> float:
        import pynvml

        return pynvml.nvmlDeviceGetMemoryInfo(self.handle).used

    def utilization(self) -> float:
        import pynvml

        return pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu

    def power_w(self) -> float:
        import pynvml

        return pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    def total_energy_j(self) -> float | None:
        """Millijoule counter since driver load (Volta+); None where unsupported."""
        import pynvml

        try:
            return pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0
        except pynvml.NVMLError:
            return None


@cache
def _open_index(index: int) -> NvmlDevice | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        # NVML numbers devices physically; match torch's device by UUID so
        # CUDA_VISIBLE_DEVICES remapping cannot point us at another GPU.
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        return NvmlDevice(pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}"))
    except Exception:  # no NVML (driver, library) here: the trackers fall back
        return None
