"""Vendor datasheet figures of the GPUs effbench knows: dense peak FLOP/s per number format and
memory bandwidth.

All FLOP/s are dense: vendors print the tensor-core rates "with sparsity" (2:4), twice the dense
figure, and those are halved here. `fp32` is the non-tensor-core (vector) rate, `tf32` the tensor-core
rate for fp32 inputs; which one a fp32 matmul runs at depends on torch's float32 matmul precision
(see `peaks.py`). A device is found by the exact name `torch.cuda.get_device_name()` reports
(compared without case and repeated spaces): a substring test would read "NVIDIA L40" as an L4.
"""

from __future__ import annotations

from dataclasses import dataclass

T = 1e12


@dataclass(frozen=True)
class GpuDatasheet:
    label: str
    names: tuple[str, ...]  # as torch.cuda.get_device_name() reports them
    fp32: float  # vector (non-tensor) FP32, FLOP/s
    tf32: float  # tensor-core TF32, dense
    fp16_bf16: float  # tensor-core FP16 and BF16 (equal on every part listed), dense
    fp8: float | None  # tensor-core FP8, dense; None: no FP8 tensor cores
    bytes_per_s: float  # memory bandwidth
    source: str


_H100_DATASHEET = ("NVIDIA H100 datasheet, "
                   "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet")
_A100_DATASHEET = ("NVIDIA A100 datasheet, https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
                   "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf")
_GH200_DATASHEET = ("NVIDIA GH200 Grace Hopper Superchip datasheet, "
                    "https://resources.nvidia.com/en-us-grace-cpu/grace-hopper-superchip")


def _a100(label: str, name: str, bytes_per_s: float) -> GpuDatasheet:
    # SXM4 and PCIe have the same FLOP/s; bandwidth: 40 GB 1,555 GB/s, 80 GB PCIe 1,935, 80 GB SXM4 2,039.
    return GpuDatasheet(label, (name,), 19.5 * T, 156 * T, 312 * T, None, bytes_per_s, _A100_DATASHEET)


_SHEETS = (
    # H100 SXM5: FP32 67, TF32 989*, BF16/FP16 1,979*, FP8 3,958* TFLOPS (* with sparsity), 3.35 TB/s.
    GpuDatasheet("H100 SXM", ("NVIDIA H100 80GB HBM3",), 67 * T, 989 / 2 * T, 1979 / 2 * T, 3958 / 2 * T,
                 3.35e12, _H100_DATASHEET),
    # H100 PCIe: FP32 51, TF32 756*, BF16 1,513*, FP8 3,026*, 2 TB/s.
    GpuDatasheet("H100 PCIe", ("NVIDIA H100 PCIe",), 51 * T, 756 / 2 * T, 1513 / 2 * T, 3026 / 2 * T,
                 2.0e12, _H100_DATASHEET),
    # H100 NVL: FP32 60, TF32 835*, BF16 1,671*, FP8 3,341*, 3.9 TB/s.
    GpuDatasheet("H100 NVL", ("NVIDIA H100 NVL",), 60 * T, 835 / 2 * T, 1671 / 2 * T, 3341 / 2 * T,
                 3.9e12, _H100_DATASHEET),
    # H200 SXM: the H100 SXM's compute with 141 GB HBM3e at 4.8 TB/s; H200 NVL: the H100 NVL's compute.
    GpuDatasheet("H200 SXM", ("NVIDIA H200",), 67 * T, 989 / 2 * T, 1979 / 2 * T, 3958 / 2 * T, 4.8e12,
                 "NVIDIA H200 datasheet, https://www.nvidia.com/en-us/data-center/h200/"),
    GpuDatasheet("H200 NVL", ("NVIDIA H200 NVL",), 60 * T, 835 / 2 * T, 1671 / 2 * T, 3341 / 2 * T, 4.8e12,
                 "NVIDIA H200 datasheet, https://www.nvidia.com/en-us/data-center/h200/"),
    # GH200: its H100 GPU at FP32 67, TF32 494, BF16 990, FP8 1,979 dense; 96 GB HBM3 at 4 TB/s
    # (reported as "480GB", the superchip's CPU+GPU memory) or 144 GB HBM3e at 4.9 TB/s.
    GpuDatasheet("GH200 96GB HBM3", ("NVIDIA GH200 480GB",), 67 * T, 494 * T, 990 * T, 1979 * T, 4.0e12,
                 _GH200_DATASHEET),
    GpuDatasheet("GH200 144GB HBM3e", ("NVIDIA GH200 144G HBM3e",), 67 * T, 494 * T, 990 * T, 1979 * T, 4.9e12,
                 _GH200_DATASHEET),
    # A100: FP32 19.5, TF32 156, BF16/FP16 312 dense; no FP8.
    _a100("A100 SXM4 40GB", "NVIDIA A100-SXM4-40GB", 1555e9),
    _a100("A100 SXM4 80GB", "NVIDIA A100-SXM4-80GB", 2039e9),
    _a100("A100 PCIe 40GB", "NVIDIA A100-PCIE-40GB", 1555e9),
    _a100("A100 PCIe 80GB", "NVIDIA A100 80GB PCIe", 1935e9),
    # L40S: FP32 91.6, TF32 183, BF16/FP16 362.05, FP8 733 dense, 864 GB/s.
    GpuDatasheet("L40S", ("NVIDIA L40S",), 91.6 * T, 183 * T, 362.05 * T, 733 * T, 864e9,
                 "NVIDIA L40S datasheet, https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413"),
    # L40: FP32 90.5, TF32 90.5, BF16/FP16 181.05, FP8 362 dense, 864 GB/s.
    GpuDatasheet("L40", ("NVIDIA L40",), 90.5 * T, 90.5 * T, 181.05 * T, 362 * T, 864e9,
                 "NVIDIA L40 datasheet, "
                 "https://images.nvidia.com/content/Solutions/data-center/vgpu-L40-datasheet.pdf"),
    # L4: FP32 30.3, TF32 120*, BF16/FP16 242*, FP8 485*, 300 GB/s.
    GpuDatasheet("L4", ("NVIDIA L4",), 30.3 * T, 60 * T, 121 * T, 242.5 * T, 300e9,
                 "NVIDIA L4 datasheet, https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet"),
    # A10G: AWS's variant of the A10, with no NVIDIA datasheet. Its GA102 has 80 SMs at the GeForce
    # tensor rate: FP32 35, TF32 35, BF16/FP16 70 TFLOPS, 600 GB/s (the A10's own sheet: 31.2 / 62.5 / 125).
    GpuDatasheet("A10G", ("NVIDIA A10G",), 35 * T, 35 * T, 70 * T, None, 600e9,
                 "no vendor datasheet; figures as compiled in "
                 "https://www.baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference/"),
    # HGX B200 per GPU: BF16/FP16 4.5 P*, FP8 9 P*, TF32 2.2 P*; FP32 75 T (80 T in other NVIDIA tables:
    # the larger is kept as the bound); 8 TB/s (later tables: 7.7 TB/s for the 180 GB part; 8 kept).
    GpuDatasheet("B200", ("NVIDIA B200",), 80 * T, 1100 * T, 2250 * T, 4500 * T, 8.0e12,
                 "NVIDIA HGX B200 specifications, https://www.nvidia.com/en-us/data-center/hgx/"),
    # MI300X: FP32 163.4 (vector and matrix), TF32 653.7, BF16/FP16 1,307.4, FP8 2,614.9 dense, 5.3 TB/s.
    GpuDatasheet("MI300X", ("AMD Instinct MI300X", "AMD Instinct MI300X VF"), 163.4 * T, 653.7 * T, 1307.4 * T,
                 2614.9 * T, 5.3e12,
                 "AMD Instinct MI300X datasheet, https://www.amd.com/content/dam/amd/en/documents/"
                 "instinct-tech-docs/data-sheets/amd-instinct-mi300x-data-sheet.pdf"),
)


def _normal(name: str) -> str:
    return " ".join(name.split()).casefold()


_BY_NAME = {_normal(n): sheet for sheet in _SHEETS for n in sheet.names}


def datasheet(device_name: str) -> GpuDatasheet | None:
    """The datasheet of a device by its exact reported name; None for a device not in the table."""
    return _BY_NAME.get(_normal(device_name))
