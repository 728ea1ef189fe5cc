"""Peak FLOP/s (docs/spec.md §2 compute): the theoretical peak MFU is measured against, and the achievable
peak of the model's own linear layers beside it.

Theoretical (source `analytic`, an upper bound so that an honest MFU never exceeds 1):
- GPU: the vendor's dense datasheet figure at the format the matmul runs in (`gpu_datasheets`).
- CPU: physical cores × max clock × FLOP per cycle of the vector FMA units the flags show. Matrix
  FLOPs are FMAs, so only FMA pipes count (never the separate FADD pipes some cores have).

Achievable (source `timer`): the best rate of `torch.nn.functional.linear` over the model's
(in_features, out_features) shapes and token count on this device, the op family the model runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from effbench.hardware import CpuDescription, CpufreqLimit, cpu_physical_cores, cpufreq_limit, synchronize
from effbench.metrics.gpu_datasheets import GpuDatasheet, datasheet
from effbench.metrics.probe_cache import cached, device_key, others_load, quiet
from effbench.metrics.record import Source

CPU_MAX_GHZ_ENV = "EFFBENCH_CPU_MAX_GHZ"


@dataclass(frozen=True)
class Peak:
    flops_per_s: float
    source: Source
    note: str


class NoTheoreticalPeak(Exception):
    """No datasheet entry or FLOP/cycle model for this device and dtype; the message says why."""


# --- CPU: FLOP per cycle ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Cores:
    """A CPU line picked out by CPUID vendor, family, model range and (optionally) brand."""

    name: str
    vendor: str
    family: int
    models: range
    brand: str = ""
    fma_bits: int | None = None  # FMA datapath narrower than the ISA's vectors
    max_boost_ghz: float | None = None
    source: str = ""

    def matches(self, cpu: CpuDescription) -> bool:
        return (cpu.vendor == self.vendor and cpu.family == self.family and cpu.model in self.models
                and self.brand in cpu.brand)


# Cores whose FMA units are narrower than the widest vectors they decode. Every other x86 core is taken
# at its ISA width with two FMA pipes, the most any x86 core has: an upper bound (Skylake-SP Silver,
# Bronze and some Gold parts have one 512-bit FMA unit, Zen 5 mobile parts 256-bit units).
_NARROW_FMA = (
    _Cores("Zen/Zen+", "AuthenticAMD", 0x17, range(0x00, 0x30), fma_bits=128,
           source="AMD Software Optimization Guide for Family 17h (pub. 55723): four 128-bit FP pipes, two "
                  "with FMA; a 256-bit AVX op is split into two 128-bit halves"),
    _Cores("Zen 3/Zen 4", "AuthenticAMD", 0x19, range(0x00, 0x100), fma_bits=256,
           source="AMD Software Optimization Guides for Family 19h (pub. 56665, 57647): two 256-bit FMA pipes; "
                  "Zen 4 runs a 512-bit AVX-512 op on them as two 256-bit halves"),
)

# Max boost clocks for CPUs that report no maximum clock (VMs without cpufreq): the highest max boost
# of any part of the line, so the bound holds whichever part this is.
_MAX_BOOST = (
    _Cores("AMD EPYC 7002 (Rome, Zen 2)", "AuthenticAMD", 0x17, range(0x30, 0x40), brand="EPYC", max_boost_ghz=3.9,
           source="EPYC 7F52 and 7F32 boost to 3.9 GHz, the highest of the 7002 series (AMD launch specifications)"),
    _Cores("AMD EPYC 7003 (Milan, Zen 3)", "AuthenticAMD", 0x19, range(0x00, 0x10), brand="EPYC", max_boost_ghz=4.1,
           source="EPYC 72F3 boosts to 4.1 GHz, the highest of the 7003 series (AMD's 7003 line-up, as tabled in "
                  "AnandTech's Milan review)"),
    _Cores("AMD EPYC 9004 (Genoa, Zen 4)", "AuthenticAMD", 0x19, range(0x10, 0x20), brand="EPYC", max_boost_ghz=4.4,
           source="EPYC 9174F boosts to 4.4 GHz, the highest of the 9004 series (amd.com product specifications); "
                  "family 19h model 10h-1Fh is Genoa"),
)


def _match(table: tuple[_Cores, ...], cpu: CpuDescription) -> _Cores | None:
    return next((c for c in table if c.matches(cpu)), None)


# AMX TDPBF16PS / TDPFP16PS: a 16×16×32 tile product (16,384 FLOP) per 16 cycles, Intel's "1,024 BF16
# operations per cycle per core" (Intel AMX overview, 4th Gen Xeon Scalable).
_AMX_FLOP_PER_CYCLE = 1024.0


def cpu_flops_per_cycle(cpu: CpuDescription, dtype: torch.dtype) -> tuple[float, str]:
    """FLOP per cycle per core at `dtype`, with how it was derived."""
    if not cpu.arch.startswith("X86"):
        raise NoTheoreticalPeak(f"no FLOP-per-cycle model for {cpu.arch} CPUs (x86 only)")
    flags = {f.replace("_", "").lower() for f in cpu.flags}
    isa_bits = 512 if "avx512f" in flags else 256 if "avx" in flags else 128
    narrow = _match(_NARROW_FMA, cpu)
    bits = min(isa_bits, narrow.fma_bits) if narrow else isa_bits
    fma = "fma" in flags
    fp32 = 2.0 * (bits // 32) * (2 if fma else 1)
    if narrow:
        units = f"{narrow.name}: 2 FMA pipes × {bits}-bit"
        if isa_bits > bits:
            units += f", {isa_bits}-bit ops run as {isa_bits // bits} halves"
    else:
        units = f"2 {'FMA' if fma else 'mul + add'} pipes × {bits}-bit (upper bound)"
    how32 = f"{units} × {bits // 32} fp32 lanes{' × 2 (FMA)' if fma else ''}"
    if dtype == torch.float32:
        return fp32, how32
    if dtype == torch.float64:
        return fp32 / 2, f"{how32} / 2 (fp64 lanes)"
    if dtype in (torch.bfloat16, torch.float16):
        name = "BF16" if dtype == torch.bfloat16 else "FP16"
        if f"amx{name.lower()}" in flags:
            return _AMX_FLOP_PER_CYCLE, f"AMX-{name} tile multiply, 1024 FLOP/cycle"
        if f"avx512{name.lower()}" in flags:
            how = ("VDPBF16PS: 2 bf16 products per fp32 lane" if name == "BF16"
                   else "AVX512_FP16: twice the fp32 lanes")
            return 2 * fp32, f"AVX512_{name} {how}, 2 × fp32 ({how32})"
        return fp32, f"no native {name.lower()} arithmetic: converted, at the fp32 rate ({how32})"
    raise NoTheoreticalPeak(f"no CPU FLOP-per-cycle model for {dtype}; known: float64, float32, bfloat16, float16")


# --- CPU: clock ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Clock:
    hz: float
    source: str
    upper_bound: bool


def choose_clock(cpu: CpuDescription, pinned_ghz: float | None, cpufreq: CpufreqLimit | None) -> Clock:
    """The max clock, from the most trusted source that gives one: pinned by the user, the kernel's
    cpufreq ceiling, the highest max boost of the CPU's line. Without any, the larger of the nominal
    and cpufreq clocks, flagged as no proven bound."""
    if pinned_ghz:
        return Clock(pinned_ghz * 1e9, f"pinned by {CPU_MAX_GHZ_ENV} / hardware.cpu_max_ghz", True)
    if cpufreq and not cpufreq.boost_beyond:
        return Clock(cpufreq.hz, f"kernel cpufreq max, {cpufreq.driver or 'driver unknown'}", True)
    line = _match(_MAX_BOOST, cpu)
    nominal = f"nominal {cpu.nominal_hz / 1e9:.2f} GHz per py-cpuinfo hz_advertised"
    if line:
        return Clock(line.max_boost_ghz * 1e9, f"no max clock reported: highest max boost of {line.name}, "
                                               f"{line.source}; {nominal}; pin the part's own with {CPU_MAX_GHZ_ENV}",
                     True)
    candidates = [(cpu.nominal_hz, "py-cpuinfo hz_advertised (nominal clock)")]
    if cpufreq:
        candidates.append((cpufreq.hz, f"kernel cpufreq max, {cpufreq.driver} (boost runs above it)"))
    hz, source = max(candidates)
    if hz <= 0:
        raise NoTheoreticalPeak(f"no CPU clock known; set {CPU_MAX_GHZ_ENV} to the max boost clock in GHz")
    return Clock(hz, f"{source}; boost may exceed it, so this peak is not a proven upper bound: "
                     f"pin the max boost with {CPU_MAX_GHZ_ENV}", False)


def cpu_peak(cpu: CpuDescription, cores: int, clock: Clock, dtype: torch.dtype) -> Peak:
    """cores × clock × FLOP/cycle, with the derivation as the note."""
    per_cycle, how = cpu_flops_per_cycle(cpu, dtype)
    value = cores * clock.hz * per_cycle
    note = (f"{cores} cores × {clock.hz / 1e9:.2f} GHz ({clock.source}) × {per_cycle:g} FLOP/cycle ({how}) "
            f"= {value / 1e9:.1f} GFLOP/s at {str(dtype).removeprefix('torch.')}")
    return Peak(value, Source.ANALYTIC, note)


def _pinned_ghz(cpu_max_ghz: float | None) -> float | None:
    """The max clock the caller (config) or the environment pins, validated; None when neither does."""
    if cpu_max_ghz is not None:
        where, text = "hardware.cpu_max_ghz", cpu_max_ghz
    else:
        where, text = CPU_MAX_GHZ_ENV, os.environ.get(CPU_MAX_GHZ_ENV) or None
    if text is None:
        return None
    try:
        ghz = float(text)
    except ValueError:
        ghz = 0.0
    if not 0 < ghz < 100:
        raise ValueError(f"{where}={text!r}: expected the CPU's max boost clock in GHz, e.g. 3.7")
    return ghz


def cached_cpu_description() -> tuple[CpuDescription, str]:
    """This CPU's description (py-cpuinfo takes ~1 s), from the probe cache when its signature matches."""
    got = cached({"probe": "cpu_description", **device_key(torch.device("cpu"))},
                 lambda: asdict(CpuDescription.read()))
    return CpuDescription(**{**got.value, "flags": tuple(got.value["flags"])}), got.note()


# --- GPU -------------------------------------------------------------------------------------------

def _fp32_matmul_format() -> str:
    """What torch computes a fp32 matmul in: its default "highest" keeps fp32 (no TF32)."""
    precision = torch.get_float32_matmul_precision()
    return {"highest": "fp32", "high": "tf32", "medium": "bf16"}.get(precision, "fp32")


def gpu_peak(sheet: GpuDatasheet, dtype: torch.dtype) -> Peak:
    fp8 = {getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
           if hasattr(torch, n)}
    if dtype in (torch.bfloat16, torch.float16):
        value, what = sheet.fp16_bf16, "dense tensor-core FP16/BF16"
    elif dtype in fp8 and sheet.fp8:
        value, what = sheet.fp8, "dense tensor-core FP8"
    elif dtype == torch.float32:
        fmt = _fp32_matmul_format()
        if fmt == "fp32":
            value, what = sheet.fp32, ("non-tensor FP32: torch.get_float32_matmul_precision() is 'highest' "
                                       "(torch's default), so fp32 matmuls do not use TF32")
        elif fmt == "tf32":
            value, what = sheet.tf32, "dense tensor-core TF32: float32 matmul precision 'high' lets fp32 matmuls use it"
        else:
            value, what = sheet.fp16_bf16, "dense tensor-core BF16: float32 matmul precision 'medium'"
    else:
        raise NoTheoreticalPeak(f"{sheet.label} datasheet has no figure for {dtype}")
    return Peak(value, Source.ANALYTIC, f"datasheet peak of {sheet.label}, {what} ({sheet.source})")


# --- entry points ----------------------------------------------------------------------------------

def theoretical_peak(device: torch.device, dtype: torch.dtype, cpu_max_ghz: float | None = None) -> Peak:
    """The peak MFU is measured against. Raises NoTheoreticalPeak for an unknown device or dtype."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        sheet = datasheet(name)
        if sheet is None:
            raise NoTheoreticalPeak(f"{name!r} is not in the GPU datasheet table")
        return gpu_peak(sheet, dtype)
    if device.type != "cpu":
        raise NoTheoreticalPeak(f"no peak model for {device.type} devices")
    try:
        cpu, cache_note = cached_cpu_description()
    except RuntimeError as e:
        raise NoTheoreticalPeak(f"CPU not described: {e}") from None
    as_bf16 = ""
    if dtype == torch.float32 and _fp32_matmul_format() != "fp32":
        dtype = torch.bfloat16  # torch may compute fp32 matmuls with bf16: its rate bounds them
        as_bf16 = f"float32 matmul precision {torch.get_float32_matmul_precision()!r} lets fp32 matmuls use bf16: "
    clock = choose_clock(cpu, _pinned_ghz(cpu_max_ghz), cpufreq_limit())
    peak = cpu_peak(cpu, cpu_physical_cores(), clock, dtype)
    return Peak(peak.flops_per_s, peak.source, f"{as_bf16}{peak.note}; CPU {cpu.brand!r} family {cpu.family:#x} "
                                               f"model {cpu.model:#x} via py-cpuinfo ({cache_note})")


def linear_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """Distinct (in_features, out_features) of the model's linear layers (quantized ones too: any
    module with integer in/out features), in order of first appearance."""
    found = ((m.in_features, m.out_features) for m in model.modules()
             if isinstance(getattr(m, "in_features", None), int) and isinstance(getattr(m, "out_features", None), int))
    return list(dict.fromkeys(found))


def _best_linear_rate(device: torch.device, dtype: torch.dtype, shapes: list[tuple[int, int]], tokens: int,
                      budget_s: float) -> dict:
    # Constant operands: GEMM time does not depend on the values, and filling is much faster than
    # drawing random numbers for the large weights of a big model.
    ws = [torch.full((o, i), 0.5, device=device, dtype=dtype) for i, o in shapes]

    def one_pass(xs: list[torch.Tensor]) -> float:
        synchronize(device)
        t0 = time.perf_counter()
        for x, w in zip(xs, ws):
            torch.nn.functional.linear(x, w)
        synchronize(device)
        return time.perf_counter() - t0

    def inputs(rows: int) -> list[torch.Tensor]:
        return [torch.full((rows, i), 0.5, device=device, dtype=dtype) for i, _ in shapes]

    with torch.inference_mode(), others_load(device) as load:
        # A full pass of a large model at a slow dtype can take seconds: time a few rows first and, if
        # a full pass would take over a quarter of the budget, time fewer rows (the note says so).
        rows = min(tokens, 32)
        xs = inputs(rows)
        one_pass(xs)  # warm-up: kernel selection and first touch of the outputs
        best = one_pass(xs)
        full_s = best * tokens / rows
        target = tokens if full_s <= budget_s / 4 else max(rows, int(tokens * budget_s / 4 / full_s))
        if target > rows:
            rows, xs = target, inputs(target)
            one_pass(xs)
            best = one_pass(xs)
        deadline = time.perf_counter() + budget_s
        while time.perf_counter() < deadline:
            best = min(best, one_pass(xs))
    flops = sum(2 * rows * i * o for i, o in shapes)
    return {"flops_per_s": flops / best, "rows": rows, "full_pass_s": full_s, "others_load": load.others}


def achievable_peak(device: torch.device, dtype: torch.dtype, shapes: Sequence[tuple[int, int]], tokens: int,
                    budget_s: float = 0.5) -> Peak:
    """Best FLOP/s of one pass of `F.linear` over every (in_features, out_features) in `shapes` with
    `tokens` rows, at `dtype` and torch's thread count; cached per device, threads, dtype, shapes, torch."""
    shapes = [(int(i), int(o)) for i, o in shapes]
    threads = torch.get_num_threads()
    key = {"probe": "achievable_peak", **device_key(device), "threads": threads,
           "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
           "shapes": shapes, "tokens": tokens, "budget_s": budget_s}
    got = cached(key, lambda: _best_linear_rate(device, dtype, shapes, tokens, budget_s), keep=quiet)
    others = got.value["others_load"]
    listed = ", ".join(f"{i}→{o}" for i, o in shapes[:8])
    if len(shapes) > 8:
        listed += f" and {len(shapes) - 8} more"
    rows = got.value["rows"]
    fewer = "" if rows == tokens else f" (timed at {rows}: a full pass would take ≈ {got.value['full_pass_s']:.1f} s)"
    note = (f"best pass of torch.nn.functional.linear over {tokens} tokens{fewer} × [{listed}] at "
            f"{key['dtype']}, {threads} threads, {budget_s} s of repeats"
            + ("" if others is None else f"; other processes took {others:.0%} of the cores meanwhile")
            + f" ({got.note()})")
    return Peak(got.value["flops_per_s"], Source.TIMER, note)
