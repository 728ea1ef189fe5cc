"""Trackers against ground truth: known allocations, analytic FLOPs, known sizes."""

import math
import time

import numpy as np
import pytest
import torch

from effbench.metrics.compression import serialized_size_at, serialized_size_bytes
from effbench.metrics.compute import ComputeTracker, count_flops
from effbench.metrics.energy import RaplEnergyTracker, energy_tracker
from effbench.metrics.latency import RequestTiming, TokenTimer, latency_metrics
from effbench.metrics.memory import CpuMemoryTracker
from effbench.metrics.record import Source, Summary
from effbench.metrics.sampler import PollingSampler
from effbench.metrics.throughput import throughput_metrics
from effbench.metrics.window import MeasuredWindow
from effbench.models import parameter_counts
from effbench.techniques.precision import PrecisionConfig, SPEC as precision

MB = 1_000_000


def test_summary_matches_hand_computation():
    s = Summary.of([1, 2, 3, 4, 5])
    assert s.mean == 3 and s.median == 3 and s.n == 5
    assert s.std == pytest.approx(math.sqrt(2.5))
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, df=4)
    assert (s.ci95_low, s.ci95_high) == pytest.approx((3 - half, 3 + half), rel=1e-6)
    assert s.p50 <= s.p90 <= s.p99 <= 5


def test_memory_tracker_sees_a_200_mb_allocation(cpu):
    tracker = CpuMemoryTracker()
    window = MeasuredWindow([tracker], cpu)
    with window.measure():
        x = torch.ones(200 * MB // 4, dtype=torch.float32)  # ones() touches every page
        time.sleep(0.05)
        del x
    delta = {m.name: m for m in tracker.metrics()}["memory.peak_delta_bytes"]
    assert delta.value == pytest.approx(200 * MB, rel=0.05)
    assert delta.source is Source.SAMPLED


def test_memory_tracker_without_allocation_sees_almost_nothing(cpu):
    tracker = CpuMemoryTracker()
    with MeasuredWindow([tracker], cpu).measure():
        time.sleep(0.05)
    delta = {m.name: m for m in tracker.metrics()}["memory.peak_delta_bytes"]
    assert delta.value < 5 * MB


def test_sampler_time_mean_is_the_integral_over_time():
    s = PollingSampler({"x": lambda: 0.0})
    s.times, s.values["x"] = [0.0, 1.0, 3.0], [0.0, 2.0, 2.0]
    assert s.time_mean("x") == pytest.approx((1.0 + 4.0) / 3.0)  # trapezoids: 1 + 4 over 3 s
    assert s.peak("x") == 2.0


def _analytic_forward_flops(model, batch, seq):
    cfg = model.config
    matmul_params = parameter_counts(model)["non_embedding"] - sum(
        p.numel() for n, p in model.named_parameters() if "norm" in n)
    attention = 2 * 2 * batch * seq * seq * cfg.hidden_size * cfg.num_hidden_layers  # QKᵀ and AV
    return 2 * matmul_params * batch * seq + attention


def test_flops_of_a_llama_forward_match_the_analytic_count(tiny):
    x = torch.randint(0, 256, (2, 96))
    with torch.no_grad():
        counted = count_flops(lambda: tiny.model(input_ids=x))
    assert counted == pytest.approx(_analytic_forward_flops(tiny.model, 2, 96), rel=0.02)


def test_cpu_sdpa_is_counted_not_zero():
    q = torch.randn(1, 4, 64, 32)
    counted = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True))
    assert counted == 2 * 2 * 4 * 64 * 64 * 32


def test_compute_tracker_mfu_is_flops_over_time_over_peak(cpu, tmp_path, monkeypatch):
    monkeypatch.setenv("EFFBENCH_CACHE_DIR", str(tmp_path))
    tracker = ComputeTracker(cpu, torch.float32, flops_per_window=10**9, flops_analytic=10**9,
                             linear_shapes=[(128, 344), (344, 128)], tokens=64)
    window = MeasuredWindow([tracker], cpu)
    with window.measure():
        a = torch.randn(512, 512)
        deadline = time.perf_counter() + 0.2
        while time.perf_counter() < deadline:
            a @ a
    m = {x.name: x for x in tracker.metrics()}
    achieved = 10**9 / window.elapsed_s[0]
    assert m["compute.mfu"].value == pytest.approx(achieved / tracker.peak.flops_per_s)
    assert m["compute.mfu_achievable"].value == pytest.approx(achieved / tracker.achievable.flops_per_s)
    assert 0 < m["compute.pcu"].value <= 1.001  # CPU time over wall × cores
    assert m["compute.peak_flops_per_s"].source is Source.ANALYTIC  # cores × clock × FLOP/cycle
    assert m["compute.achievable_peak_flops_per_s"].source is Source.TIMER
    assert m["compute.peak_flops_per_s"].value >= m["compute.achievable_peak_flops_per_s"].value
    assert "128→344, 344→128" in m["compute.achievable_peak_flops_per_s"].note


def _busy_python(seconds):
    """One thread spinning in Python; returns that thread's own CPU time."""
    t0, deadline = time.thread_time(), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass
    return time.thread_time() - t0


def test_pcu_of_one_busy_thread_is_its_cpu_time_over_all_cores(cpu):
    from effbench.hardware import cpu_cores

    tracker = ComputeTracker(cpu, torch.float32)  # no FLOPs: PCU only
    window = MeasuredWindow([tracker], cpu)
    own = []
    time.sleep(0.5)  # torch's idle OpenMP workers spin a while after a parallel region: let them sleep
    for _ in range(10):  # 20 ms windows: 10 ms CPU-time ticks would read 0.5 or 1.0 here
        with window.measure():
            own.append(_busy_python(0.02))
    for pcu, thread_s, wall_s in zip(tracker.pcu, own, window.elapsed_s):
        assert pcu <= 1 / cpu_cores() + 0.01  # one thread fills one of the cores at most
        assert pcu == pytest.approx(thread_s / (wall_s * cpu_cores()), abs=0.02)  # the thread is the process


def test_pcu_of_short_busy_windows_never_exceeds_one(cpu):
    tracker = ComputeTracker(cpu, torch.float32)
    window = MeasuredWindow([tracker], cpu)
    a = torch.randn(384, 384)
    for _ in range(20):
        with window.measure():
            deadline = time.perf_counter() + 0.015
            while time.perf_counter() < deadline:
                a @ a  # torch's intra-op threads on every core
    assert max(tracker.pcu) <= 1.001
    assert tracker.metrics()[0].source is Source.TIMER


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_halves_the_serialized_size(tiny, cpu, dtype):
    fp32 = serialized_size_at(tiny.model, torch.float32)
    model = precision.apply(tiny.model.__class__(tiny.model.config), PrecisionConfig(name="x", dtype=dtype), cpu)
    assert fp32 / serialized_size_bytes(model) == pytest.approx(2.0, rel=0.01)


def test_serialized_size_is_the_file_size_and_counts_bytes(tiny):
    n = sum(p.numel() for p in tiny.model.parameters())
    size = serialized_size_bytes(tiny.model)
    assert 4 * n < size < 4 * n + 64 * 1024  # tensor bytes plus a small JSON header
    assert serialized_size_at(tiny.model, torch.float32) == size


def _generate_timed(model, cpu, batch=2, prompt=16, out=12):
    timer = TokenTimer(cpu)
    x = torch.randint(3, 256, (batch, prompt))
    timer.reset()
    with torch.no_grad():
        model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=out, min_new_tokens=out,
                       do_sample=False, pad_token_id=0, streamer=timer)
    return timer.timing()


def test_token_timer_sees_every_generated_token(tiny, cpu):
    timing = _generate_timed(tiny.model, cpu, out=12)
    assert timing.steps == 12
    assert 0 < timing.ttft < timing.e2e
    assert timing.tpot == pytest.approx((timing.e2e - timing.ttft) / 11)
    assert sum(timing.itl) == pytest.approx(timing.e2e - timing.ttft)


def test_latency_percentiles_are_ordered(tiny, cpu):
    requests = [_generate_timed(tiny.model, cpu) for _ in range(3)]
    for m in latency_metrics(requests):
        s = m.summary
        assert min(m.samples) <= s.p50 <= s.p90 <= s.p99 <= max(m.samples), m.name
        assert m.source is Source.TIMER
    by = {m.name: m for m in latency_metrics(requests)}
    assert all(t < e for t, e in zip(by["latency.ttft_s"].samples, by["latency.e2e_s"].samples))


def test_throughput_times_time_gives_the_token_count():
    r = RequestTiming(start=0.0, token_times=[0.5, 0.6, 0.7, 0.9])  # 4 tokens, batch 3, prompt 100
    by = {m.name: m for m in throughput_metrics([r], batch_size=3, prompt_tokens=100)}
    assert by["throughput.prefill_tokens_per_s"].value * r.ttft == pytest.approx(300)
    assert by["throughput.decode_tokens_per_s"].value * (r.e2e - r.ttft) == pytest.approx(3 * 3)


def test_energy_on_this_cpu_is_labelled(cpu):
    tracker = energy_tracker(cpu, tokens_per_window=10)
    with MeasuredWindow([tracker], cpu).measure():
        time.sleep(0.2)
    by = {m.name: m for m in tracker.metrics()}
    assert by["energy.joules"].value > 0
    assert by["energy.avg_power_w"].value == pytest.approx(by["energy.joules"].value / tracker.seconds[0])
    assert by["energy.joules_per_token"].value == pytest.approx(by["energy.joules"].value / 10)
    # Without a readable counter the figure must say it is an estimate.
    assert all(m.source in (Source.COUNTER, Source.ESTIMATED) for m in by.values())


def test_rapl_reads_counters_and_handles_wraparound(tmp_path, cpu):
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "max_energy_range_uj").write_text("1000000")
    (zone / "energy_uj").write_text("900000")
    tracker = RaplEnergyTracker([zone])
    assert tracker.idle_power_w == 0  # the counter did not move while idle
    tracker.begin()
    (zone / "energy_uj").write_text("100000")  # wrapped: 0.1 J to the top, 0.1 J after
    joules, source, _ = tracker._stop_reading()
    assert joules == pytest.approx(0.2) and source is Source.COUNTER


def test_window_stops_trackers_when_the_workload_raises(cpu):
    tracker = CpuMemoryTracker()
    with pytest.raises(RuntimeError):
        with MeasuredWindow([tracker], cpu).measure():
            raise RuntimeError("boom")
    assert not tracker._sampler._thread.is_alive()


def test_sample_arrays_are_plain_floats(cpu):
    tracker = CpuMemoryTracker()
    with MeasuredWindow([tracker], cpu).measure():
        pass
    assert all(isinstance(s, float) for m in tracker.metrics() for s in m.samples)
    assert np.isfinite([m.value for m in tracker.metrics()]).all()


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_measured_kv_cache_per_token_equals_the_formula(tiny_cfg, kv_heads):
    from dataclasses import replace

    from effbench.metrics.memory import measured_kv_bytes_per_token
    from effbench.models import load_model

    model = load_model(replace(tiny_cfg, arch_options={"num_kv_heads": kv_heads})).model
    head_dim = tiny_cfg.hidden_size // tiny_cfg.num_heads
    expected = 2 * tiny_cfg.num_layers * kv_heads * head_dim * 4  # K and V, fp32
    assert measured_kv_bytes_per_token(model, torch.randint(3, 256, (2, 32))) == expected


def test_grouped_mm_of_moe_experts_is_counted():
    tokens, k, n, experts = 8, 8, 4, 2  # grouped_mm wants 16-byte-aligned strides
    a, b = torch.randn(tokens, k), torch.randn(experts, k, n)
    offs = torch.tensor([2, tokens], dtype=torch.int32)  # rows 0-1 → expert 0, rows 2-7 → expert 1
    assert count_flops(lambda: torch._grouped_mm(a, b, offs=offs)) == 2 * tokens * k * n
    # Weight-gradient form: K split into groups, one M × N output per group.
    x, g = torch.randn(k, tokens), torch.randn(tokens, n)
    assert count_flops(lambda: torch._grouped_mm(x, g, offs=offs)) == 2 * k * tokens * n


def test_moe_training_flops_match_the_dense_model_of_equal_active_width(tiny_cfg):
    """Top-2 of 8 experts each 1/2 the dense FFN width: per token the same FFN FLOPs as the
    dense model (plus the router), so the counted totals agree closely."""
    from dataclasses import replace

    from effbench.models import load_model

    from effbench.models import parameter_counts

    x = torch.randint(3, 256, (2, 32))
    counted, flop_n = {}, {}
    for arch, opts in (("llama", {}), ("mixtral", {"num_experts": 8, "top_k": 2})):
        # The sweep's tiny width (expert 344 = 688 / 2): grouped_mm needs 16-byte-aligned strides.
        model = load_model(replace(tiny_cfg, arch=arch, arch_options=opts, hidden_size=256, num_heads=8,
                                   num_layers=1, intermediate_size=688)).model
        counted[arch] = count_flops(lambda: model(input_ids=x, labels=x).loss.backward())
        flop_n[arch] = parameter_counts(model)["active_non_embedding"]
    assert counted["mixtral"] == pytest.approx(counted["llama"], rel=0.05)
    # The N of the 6·N·tokens rule counts the two active experts only, as the counter does.
    assert flop_n["mixtral"] == pytest.approx(flop_n["llama"], rel=0.01)


class _FakeNvml:
    """A GPU whose energy counter and power reading the test controls."""

    def __init__(self):
        self.energy_j, self.watts = 1000.0, 50.0

    def total_energy_j(self):
        return self.energy_j

    def power_w(self):
        return self.watts


def test_energy_source_is_per_window_and_the_metric_takes_the_weakest(monkeypatch):
    from effbench.metrics import energy

    monkeypatch.setattr(energy.time, "sleep", lambda s: None)
    gpu = _FakeNvml()
    tracker = energy.NvmlEnergyTracker(gpu, tokens_per_window=4)
    # A long window read by the counter: 30 J.
    monkeypatch.setattr(energy, "_NVML_COUNTER_MIN_WINDOW_S", 0.0)
    tracker.begin()
    gpu.energy_j += 30.0
    tracker.end(0.3)
    # A window too short for the counter: power × time instead.
    monkeypatch.setattr(energy, "_NVML_COUNTER_MIN_WINDOW_S", 10.0)
    tracker.begin()
    tracker.end(0.01)
    assert [s for s, _ in tracker.window_sources] == [Source.COUNTER, Source.SAMPLED]
    joules = {m.name: m for m in tracker.metrics()}["energy.joules"]
    assert joules.samples[0] == 30.0
    assert joules.source is Source.SAMPLED  # the weakest of its windows
    assert "1 of 2 windows" in joules.note and "counter" in joules.note and "sampled" in joules.note
