"""Peaks, bandwidth, MBU bytes and the probe cache against hand computations and this machine."""

import json
import re
import time

import pytest
import torch

from effbench.hardware import CpuDescription, CpufreqLimit, cpu_physical_cores, last_level_cache_bytes
from effbench.metrics import peaks, probe_cache
from effbench.metrics.bandwidth import (Bandwidth, decode_bytes_moved, decode_bytes_per_step, decode_memory_metrics, mbu,
                                        memory_bandwidth, stream_probe)
from effbench.metrics.gpu_datasheets import datasheet
from effbench.metrics.peaks import (Clock, NoTheoreticalPeak, achievable_peak, choose_clock, cpu_peak, gpu_peak,
                                    linear_shapes, theoretical_peak)
from effbench.metrics.record import Source

G = 1e9
MiB = 1024**2


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(peaks.CPU_MAX_GHZ_ENV, raising=False)
    return tmp_path / "cache"


def _cpu(vendor="GenuineIntel", family=6, model=0x3F, brand="Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz",
         flags=("avx", "avx2", "fma", "f16c", "sse4_2"), nominal_ghz=2.5):
    return CpuDescription("X86_64", vendor, family, model, brand, tuple(flags), nominal_ghz * 1e9)


HASWELL = _cpu()  # AVX2 + FMA, 256-bit
COOPER_LAKE = _cpu(model=0x55, brand="Intel(R) Xeon(R) Platinum 8380H CPU @ 2.90GHz",
                   flags=("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"))
SAPPHIRE_RAPIDS = _cpu(model=0x8F, brand="Intel(R) Xeon(R) Platinum 8480+",
                       flags=("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"))
GRANITE_RAPIDS = _cpu(model=0xAD, brand="Intel(R) Xeon(R) 6980P",
                      flags=("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16"))
GENOA = _cpu("AuthenticAMD", 0x19, 0x11, "AMD EPYC", ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16"), 2.596144)
ZEN1 = _cpu("AuthenticAMD", 0x17, 0x01, "AMD EPYC 7601 32-Core Processor", ("avx", "avx2", "fma"), 2.2)


def _gflops(cpu, cores, ghz, dtype):
    return cpu_peak(cpu, cores, Clock(ghz * 1e9, "test", True), dtype).flops_per_s / G


@pytest.mark.parametrize("cpu, cores, ghz, expected", [
    # cores × GHz × FLOP/cycle; FLOP/cycle = 2 FMA pipes × fp32 lanes × 2, or the bf16/fp16 unit's rate.
    (HASWELL, 4, 3.3, {"float32": 4 * 3.3 * 32, "bfloat16": 4 * 3.3 * 32, "float16": 4 * 3.3 * 32,
                       "float64": 4 * 3.3 * 16}),
    (COOPER_LAKE, 8, 3.0, {"float32": 8 * 3.0 * 64, "bfloat16": 8 * 3.0 * 128, "float16": 8 * 3.0 * 64}),
    (SAPPHIRE_RAPIDS, 4, 3.5, {"float32": 4 * 3.5 * 64, "bfloat16": 4 * 3.5 * 1024, "float16": 4 * 3.5 * 128}),
    (GRANITE_RAPIDS, 2, 3.9, {"float32": 2 * 3.9 * 64, "bfloat16": 2 * 3.9 * 1024, "float16": 2 * 3.9 * 1024}),
    # Zen 4: AVX-512 on two 256-bit FMA pipes; AVX512_BF16 doubles bf16; fp16 is converted to fp32.
    (GENOA, 2, 4.4, {"float32": 2 * 4.4 * 32, "bfloat16": 2 * 4.4 * 64, "float16": 2 * 4.4 * 32}),
    (ZEN1, 2, 3.2, {"float32": 2 * 3.2 * 16}),  # 256-bit AVX2 split over 128-bit pipes
])
def test_cpu_peak_from_flags_and_clock(cpu, cores, ghz, expected):
    for dtype, gflops in expected.items():
        assert _gflops(cpu, cores, ghz, getattr(torch, dtype)) == pytest.approx(gflops), dtype


def test_cpu_peak_note_shows_the_derivation():
    note = cpu_peak(GENOA, 2, Clock(4.4e9, "pinned", True), torch.float32).note
    assert note.startswith("2 cores × 4.40 GHz (pinned) × 32 FLOP/cycle (")
    assert "256-bit" in note and note.endswith("= 281.6 GFLOP/s at float32")


def test_non_x86_and_unknown_dtypes_have_no_cpu_peak():
    arm = CpuDescription("ARM_8", "", 0, 0, "Neoverse-V2", ("asimd", "sve"), 3e9)
    with pytest.raises(NoTheoreticalPeak, match="ARM_8"):
        cpu_peak(arm, 4, Clock(3e9, "x", True), torch.float32)
    with pytest.raises(NoTheoreticalPeak, match="int8"):
        cpu_peak(HASWELL, 4, Clock(3e9, "x", True), torch.int8)


def test_clock_sources_in_order_of_trust():
    assert choose_clock(GENOA, 3.7, None).hz == 3.7e9  # pinned by the user wins
    exact = CpufreqLimit(3.5e9, "intel_pstate", boost_beyond=False)
    assert choose_clock(HASWELL, None, exact) == Clock(3.5e9, "kernel cpufreq max, intel_pstate", True)
    # No max clock reported on a Genoa VM: the line's highest max boost bounds it.
    bound = choose_clock(GENOA, None, None)
    assert bound.hz == 4.4e9 and bound.upper_bound and "nominal 2.60 GHz" in bound.source
    milan = _cpu("AuthenticAMD", 0x19, 0x01, "AMD EPYC 7763 64-Core Processor", ("avx2", "fma"), 2.45)
    assert choose_clock(milan, None, None).hz == pytest.approx(4.1e9)
    threadripper = _cpu("AuthenticAMD", 0x19, 0x18, "AMD Ryzen Threadripper 7980X", ("avx512f", "fma"), 3.2)
    assert not choose_clock(threadripper, None, None).upper_bound  # same family and model range, not an EPYC
    # acpi-cpufreq with boost on reports the base clock: for an unknown line nothing is a proven bound.
    base = choose_clock(HASWELL, None, CpufreqLimit(2.5e9, "acpi-cpufreq", boost_beyond=True))
    assert base.hz == 2.5e9 and not base.upper_bound and "not a proven upper bound" in base.source


def test_a_bad_pinned_clock_names_its_source(monkeypatch):
    monkeypatch.setenv(peaks.CPU_MAX_GHZ_ENV, "fast")
    with pytest.raises(ValueError, match=peaks.CPU_MAX_GHZ_ENV):
        theoretical_peak(torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="hardware.cpu_max_ghz"):
        theoretical_peak(torch.device("cpu"), torch.float32, cpu_max_ghz=3700)  # MHz, not GHz


def test_pinned_clock_sets_this_cpus_peak(monkeypatch):
    monkeypatch.setenv(peaks.CPU_MAX_GHZ_ENV, "3.0")
    cpu, _ = peaks.cached_cpu_description()
    peak = theoretical_peak(torch.device("cpu"), torch.float32)
    per_cycle, _ = peaks.cpu_flops_per_cycle(cpu, torch.float32)
    assert peak.flops_per_s == pytest.approx(cpu_physical_cores() * 3.0e9 * per_cycle)
    assert peak.source is Source.ANALYTIC and "pinned" in peak.note


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_theoretical_bounds_achievable_on_this_cpu(dtype):
    cpu = torch.device("cpu")
    theoretical = theoretical_peak(cpu, dtype)
    if "not a proven upper bound" in theoretical.note:
        pytest.skip("no max clock known for this CPU: set EFFBENCH_CPU_MAX_GHZ")
    achievable = achievable_peak(cpu, dtype, [(256, 688), (688, 256)], tokens=128, budget_s=0.2)
    assert 0 < achievable.flops_per_s <= theoretical.flops_per_s
    assert achievable.source is Source.TIMER and theoretical.source is Source.ANALYTIC


def test_a_long_achievable_probe_times_fewer_rows_and_says_so():
    t0 = time.perf_counter()
    peak = achievable_peak(torch.device("cpu"), torch.float32, [(1024, 1024)], tokens=200_000, budget_s=0.2)
    assert time.perf_counter() - t0 < 3  # a full pass alone would take seconds
    rows = int(re.search(r"over 200000 tokens \(timed at (\d+):", peak.note).group(1))
    assert 32 <= rows < 200_000 and peak.flops_per_s > 0


@pytest.mark.parametrize("name, label", [
    ("NVIDIA L4", "L4"), ("NVIDIA L40", "L40"), ("NVIDIA L40S", "L40S"),
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"), ("NVIDIA GH200 480GB", "GH200 96GB HBM3"), ("NVIDIA A100-SXM4-80GB", "A100 SXM4 80GB"),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"), ("NVIDIA A10G", "A10G"), ("nvidia  b200", "B200"),
    ("AMD Instinct MI300X", "MI300X"),
])
def test_gpu_datasheets_match_exact_names(name, label):
    assert datasheet(name).label == label


@pytest.mark.parametrize("name", ["NVIDIA H100", "NVIDIA L4 Ti", "NVIDIA GeForce RTX 4090", "NVIDIA A10"])
def test_names_not_in_the_table_match_nothing(name):
    assert datasheet(name) is None


def test_gpu_peaks_are_dense_and_fp32_follows_torchs_matmul_precision():
    h100 = datasheet("NVIDIA H100 80GB HBM3")
    assert gpu_peak(h100, torch.bfloat16).flops_per_s == 989.5e12  # 1,979 "with sparsity" / 2
    assert gpu_peak(h100, torch.float8_e4m3fn).flops_per_s == 1979e12
    assert gpu_peak(h100, torch.float32).flops_per_s == 67e12  # torch's default: no TF32
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert gpu_peak(h100, torch.float32).flops_per_s == 494.5e12
    finally:
        torch.set_float32_matmul_precision(before)
    with pytest.raises(NoTheoreticalPeak):
        gpu_peak(datasheet("NVIDIA A100-SXM4-40GB"), torch.float8_e4m3fn)  # no FP8 tensor cores


def test_an_l40_is_not_read_as_an_l4(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L40")
    assert theoretical_peak(torch.device("cuda"), torch.bfloat16).flops_per_s == 181.05e12
    assert memory_bandwidth(torch.device("cuda")).bytes_per_s == 864e9


def test_stream_bytes_are_counted_as_stream_does():
    result = stream_probe(torch.device("cpu"), 8 * MiB, budget_s=0.05)
    elements = 8 * MiB // 4
    assert result["copy"]["bytes"] == 2 * elements * 4  # read a, write c
    assert result["triad"]["bytes"] == 3 * elements * 4  # read b and c, write a
    bw = memory_bandwidth(torch.device("cpu"), array_bytes=8 * MiB, budget_s=0.05)
    assert bw.source is Source.TIMER and "write-allocate traffic not counted" in bw.note


def test_memory_bandwidth_of_this_cpu_is_plausible():
    t0 = time.perf_counter()
    bw = memory_bandwidth(torch.device("cpu"))
    assert 1e9 < bw.bytes_per_s < 1e12  # DRAM of any machine this runs on: GB/s to below a TB/s
    assert time.perf_counter() - t0 < 5
    if last_level_cache_bytes():  # arrays at least four times the last-level cache
        assert int(re.search(r"(\d+)× the \d+ MiB last-level cache", bw.note).group(1)) >= 4


def test_decode_bytes_match_a_hand_computation():
    # 3 decode steps after prefill; contexts 6, 7, 8 positions; 2 sequences; 10 B of KV per token.
    assert decode_bytes_per_step(1000, 10, 2, 6) == 1120
    assert decode_bytes_moved(1000, 10, batch=2, prompt_tokens=5, output_tokens=4) == 1120 + 1140 + 1160
    assert decode_bytes_moved(1000, 10, batch=2, prompt_tokens=5, output_tokens=1) == 0  # all prefill
    bw = Bandwidth(1710.0, Source.TIMER, "test")
    assert mbu(3420, 2.0, bw) == pytest.approx(1.0)
    decode, window, metric = decode_memory_metrics(1000, 10, 2, 5, 4, [2.0, 4.0], bw)
    assert decode.value == 3420 and window.value == 1000 + 3420  # prefill reads the weights once
    assert metric.samples == pytest.approx([1.0, 0.5]) and metric.source is Source.TIMER
    with pytest.raises(ValueError):
        mbu(3420, 0.0, bw)


def test_linear_shapes_are_the_models_distinct_layers(tiny):
    shapes = linear_shapes(tiny.model)
    layers = {(m.in_features, m.out_features) for m in tiny.model.modules() if isinstance(m, torch.nn.Linear)}
    assert set(shapes) == layers and len(shapes) == len(layers)


def test_probe_cache_reuses_and_invalidates_by_key(cache_dir):
    calls = []

    def measure():
        calls.append(1)
        return {"x": len(calls)}

    first = probe_cache.cached({"probe": "t", "dtype": "float32"}, measure)
    again = probe_cache.cached({"dtype": "float32", "probe": "t"}, measure)  # same key, any order
    assert (first.reused, again.reused, len(calls)) == (False, True, 1)
    assert again.value == {"x": 1} and again.note() == f"cached, measured {first.measured_at}"
    other = probe_cache.cached({"probe": "t", "dtype": "bfloat16"}, measure)
    assert not other.reused and other.value == {"x": 2}
    skipped = probe_cache.cached({"probe": "busy"}, measure, keep=lambda v: False)
    assert not probe_cache.cached({"probe": "busy"}, measure).reused and len(calls) == 4
    assert "not cached" in skipped.note()
    stored = json.loads((cache_dir / "probes.json").read_text())
    assert len(stored["entries"]) == 3


def test_a_corrupt_cache_is_measured_again(cache_dir):
    cache_dir.mkdir()
    (cache_dir / "probes.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable"):
        got = probe_cache.cached({"probe": "t"}, lambda: {"x": 1})
    assert got.value == {"x": 1} and not got.reused


def test_achievable_peak_is_cached_per_dtype_shapes_threads_and_torch(monkeypatch):
    calls = []

    def fake_rate(device, dtype, shapes, tokens, budget_s):
        calls.append((dtype, tuple(shapes), tokens))
        return {"flops_per_s": 1e9 * len(calls), "rows": tokens, "full_pass_s": 0.0, "others_load": 0.0}

    monkeypatch.setattr(peaks, "_best_linear_rate", fake_rate)
    cpu = torch.device("cpu")
    first = achievable_peak(cpu, torch.float32, [(8, 16)], 4)
    again = achievable_peak(cpu, torch.float32, [(8, 16)], 4)
    assert again.flops_per_s == first.flops_per_s == 1e9 and "cached, measured" in again.note
    achievable_peak(cpu, torch.bfloat16, [(8, 16)], 4)
    achievable_peak(cpu, torch.float32, [(8, 32)], 4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        achievable_peak(cpu, torch.float32, [(8, 16)], 4)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    achievable_peak(cpu, torch.float32, [(8, 16)], 4)
    assert len(calls) == 5  # each key change measured afresh, the repeat reused


def test_a_probe_on_a_busy_machine_is_not_kept(monkeypatch):
    monkeypatch.setattr(peaks, "_best_linear_rate",
                        lambda *a: {"flops_per_s": 1e9, "rows": 4, "full_pass_s": 0.0, "others_load": 0.5})
    first = achievable_peak(torch.device("cpu"), torch.float32, [(8, 16)], 4)
    assert "took 50% of the cores" in first.note and "not cached" in first.note
    assert not achievable_peak(torch.device("cpu"), torch.float32, [(8, 16)], 4).note.count("cached, measured")
