"""Trackers against ground truth: known allocations, analytic FLOPs, known sizes."""

import math
import time

import numpy as np
import pytest
import torch
from scipy import stats

from effbench.metrics.catalog import CATALOG, RUNTIME_DOMINATED_SHARE, UTILIZATION_TOLERANCE, make_metric
from effbench.metrics.compression import serialized_size_at, serialized_size_bytes
from effbench.metrics.compute import ComputeTracker
from effbench.metrics.energy import RaplEnergyTracker, energy_tracker
from effbench.metrics.latency import RequestTiming, TokenTimer, latency_metrics
from effbench.metrics.memory import (CpuMemoryTracker, cache_bytes, model_resident_bytes,
                                     resident_memory_metrics)
from effbench.metrics.record import MIN_SAMPLES_MEDIAN_CI, Metric, Source, Summary, invalid_metrics
from effbench.metrics.sampler import PollingSampler
from effbench.metrics.throughput import throughput_metrics
from effbench.metrics.window import MeasuredWindow, warm_up
from effbench.techniques.precision import PrecisionConfig, SPEC as precision

MB = 1_000_000


def test_summary_matches_hand_computation():
    s = Summary.of([1, 2, 3, 4, 5])
    assert s.mean == 3 and s.median == 3 and s.n == 5
    assert s.std == pytest.approx(math.sqrt(2.5))
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, df=4)
    assert (s.ci95_low, s.ci95_high) == pytest.approx((3 - half, 3 + half), rel=1e-6)
    assert s.p50 <= s.p90 <= s.p99 <= 5


def _median_interval_by_hand(samples):
    """Order statistics x(k), x(n−k+1) with k the largest such that P(Bin(n, ½) ≤ k − 1) ≤ 2.5%."""
    n, x = len(samples), sorted(samples)
    k = max(j for j in range(1, n // 2 + 1) if sum(math.comb(n, i) for i in range(j)) / 2**n <= 0.025)
    return x[k - 1], x[n - k]


@pytest.mark.parametrize("n", [6, 10, 20, 37])
def test_median_interval_is_the_order_statistics(n):
    samples = list(np.random.default_rng(n).lognormal(0, 1, n))
    s = Summary.of(samples)
    assert (s.median_ci95_low, s.median_ci95_high) == _median_interval_by_hand(samples)
    scipy_ci = stats.quantile_test(samples, p=0.5).confidence_interval(0.95)  # the library's, 20× slower
    assert (s.median_ci95_low, s.median_ci95_high) == (scipy_ci.low, scipy_ci.high)
    assert s.median_ci95_low <= s.median <= s.median_ci95_high and not s.few_samples


def test_median_interval_needs_six_samples():
    assert MIN_SAMPLES_MEDIAN_CI == 6  # 1 − 2·0.5⁶ = 0.969 ≥ 0.95 > 1 − 2·0.5⁵
    five = Summary.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert five.few_samples and five.median_ci95_low is None and five.median_ci95_high is None
    assert Summary.of([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).median_ci95_low == 1.0


def test_intervals_of_positive_quantities_never_go_below_zero():
    """The issue's bnb-int8 TTFT: n = 3, mean 68 ms, Student-t interval −66 ms to 203 ms."""
    ttft = [0.0083, 0.0627, 0.1330]
    t_half = 4.302653 * float(np.std(ttft, ddof=1)) / math.sqrt(3)
    assert np.mean(ttft) == pytest.approx(0.068, abs=5e-4) and np.mean(ttft) - t_half < -0.06  # the old interval
    for name, samples in (("latency.ttft_s", ttft), ("throughput.decode_tokens_per_s", [40.0, 190.0, 35.0]),
                          ("energy.joules", [0.5, 9.0, 0.2]), ("memory.peak_delta_bytes", [4096.0, 2e8])):
        s = make_metric(name, float(np.median(samples)), Source.TIMER, samples).summary
        assert 0 < s.ci95_low < s.mean < s.ci95_high, name
        # Cox's log-normal interval of the mean, by hand
        y = np.log(samples)
        s2, n = y.var(ddof=1), len(y)
        half = stats.t.ppf(0.975, n - 1) * math.sqrt(s2 / n + s2**2 / (2 * (n - 1)))
        assert (s.ci95_low, s.ci95_high) == pytest.approx(
            (math.exp(y.mean() + s2 / 2 - half), math.exp(y.mean() + s2 / 2 + half)), rel=1e-9)


def test_intervals_of_fractions_stay_within_zero_and_one():
    s = make_metric("serve.slo_attainment", 1.0, Source.TIMER, [0.0, 1.0, 1.0]).summary
    assert (s.ci95_low, s.ci95_high) == (0.0, 1.0)  # Student-t alone: −0.77 to 2.1
    pcu = make_metric("compute.pcu", 1.02, Source.TIMER, [1.02, 1.02]).summary  # within tolerance: its own value
    assert pcu.ci95_low == pcu.ci95_high == pytest.approx(1.02)


def test_every_catalogued_metric_states_its_domain():
    assert [name for name, spec in CATALOG.items() if spec.domain is None] == []


@pytest.mark.parametrize(("name", "value", "samples", "words"), [
    ("compute.mfu", 5.0, [], "[0, 1] + tolerance 0.05"),
    ("energy.joules", -1.0, [], "[0, ∞)"),
    ("latency.tpot_s", 0.0, [], "(0, ∞)"),
    ("compression.size_bytes", 0.0, [], "(0, ∞)"),
    ("latency.tpot_s", 0.02, [0.01, 0.0, 0.02], "1 of 3 samples"),
])
def test_an_impossible_figure_is_kept_flagged_invalid(name, value, samples, words):
    m = make_metric(name, value, Source.TIMER, samples)
    assert m.value == value and name in m.invalid and words in m.invalid and "defect" in m.invalid
    back = Metric.from_dict(m.to_dict())
    assert back == m and back.invalid == m.invalid
    assert invalid_metrics([make_metric("compute.mfu", 0.4, Source.TIMER), m]) == [m]


@pytest.mark.parametrize("store_url", ["sqlite:///{}/s.db", "json:///{}/runs", None])
def test_invalid_survives_the_import_checks_and_the_stores(tmp_path, store_url):
    from factories import make_record

    from effbench.store import open_store, record_from_dict

    record = make_record()
    record.metrics.append(make_metric("compute.mfu", 5.0, Source.TIMER))
    reason = record.metric("compute.mfu").invalid
    if store_url is None:  # an exported JSON record, imported
        back = record_from_dict(record.to_dict())
    else:
        store = open_store(store_url.format(tmp_path))
        store.write(record)
        back = store.get(record.id)
    assert [m.name for m in invalid_metrics(back.metrics)] == ["compute.mfu"]
    assert back.metric("compute.mfu").invalid == reason


def test_figures_within_their_domain_are_valid():
    assert make_metric("compute.mfu", 1.04, Source.TIMER).invalid is None  # within the stated tolerance
    assert make_metric("energy.joules", 0.0, Source.ESTIMATED).invalid is None
    assert make_metric("quality.perplexity", 1.0, Source.ANALYTIC).invalid is None
    assert make_metric("quality.perplexity", 0.9, Source.ANALYTIC).invalid is not None


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


def test_peak_delta_is_the_working_memory_even_after_a_warm_up(cpu):
    """After a warm-up, the workload's freed buffers sit in glibc's heap below what it
    kept (its output): still resident, so the window's RSS grew by ~0 (the demo's
    "4 KiB"). Handed back to the OS at the window's start, the 32 MiB it touches show."""
    kept = []

    def workload():
        chunks = [torch.ones(2 * 2**20 // 4) for _ in range(16)]  # 16 × 2 MiB, every page touched
        kept.append(torch.ones(64 * 1024 // 4))  # allocated after the chunks: above them in the heap
        time.sleep(0.06)
        return chunks

    for _ in range(3):
        workload()  # warm-up (the first also raises glibc's mmap threshold past 2 MiB)
    tracker = CpuMemoryTracker()
    with MeasuredWindow([tracker], cpu).measure():
        workload()
    delta = {m.name: m for m in tracker.metrics()}["memory.peak_delta_bytes"]
    assert delta.value == pytest.approx(32 * 2**20, rel=0.05)
    assert "malloc_trim" in delta.note and delta.invalid is None


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


def test_compute_tracker_mfu_is_flops_over_time_over_peak(cpu, tmp_path, monkeypatch):
    monkeypatch.setenv("EFFBENCH_CACHE", str(tmp_path))
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
    for _ in range(30):
        with window.measure():
            deadline = time.perf_counter() + 0.02
            while time.perf_counter() < deadline:
                a @ a  # torch's intra-op threads on every core
    # The process clock (time.process_time) brings another core's running thread up to date only
    # at its scheduler ticks: over 20 ms windows it read up to 110%. Each thread's own clock is exact.
    assert max(tracker.pcu) <= 1 + UTILIZATION_TOLERANCE
    assert tracker.metrics()[0].source is Source.TIMER


def test_thread_clocks_count_each_live_thread_and_miss_a_finished_one():
    import threading

    from effbench.metrics.compute import cpu_seconds_between, threads_cpu_s

    start, p0 = threads_cpu_s(), time.process_time()
    worker = threading.Thread(target=_busy_python, args=(0.3,))  # born inside the interval
    worker.start()
    _busy_python(0.3)
    worker.join()
    end, p1 = threads_cpu_s(), time.process_time()
    # The worker ended before the end reading, so its time is missed: the sum is this thread's
    # and the idle threads' (torch's pool) only.
    me = threading.get_native_id()
    assert worker.native_id not in end and me in start
    assert cpu_seconds_between(start, end) >= end[me] - start[me]
    # Two spinning Python threads share the GIL, ~0.15 s each; the process clock keeps the worker's.
    assert 0.1 < cpu_seconds_between(start, end) < (p1 - p0) - 0.05


def test_without_thread_clocks_pcu_comes_from_the_process_clock(cpu, monkeypatch):
    import effbench.metrics.compute as compute
    from effbench.hardware import cpu_cores

    def no_proc(path):
        raise FileNotFoundError(path)

    monkeypatch.setattr(compute.os, "listdir", no_proc)  # as on a kernel without /proc/self/task
    tracker = ComputeTracker(cpu, torch.float32)
    window = MeasuredWindow([tracker], cpu)
    with window.measure():
        own = _busy_python(0.05)
    assert list(compute.threads_cpu_s()) == [compute._PROCESS]
    assert tracker.pcu[0] == pytest.approx(own / (window.elapsed_s[0] * cpu_cores()), abs=0.05)


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


def test_resident_bytes_are_the_tensor_bytes_of_the_safetensors_file(tiny):
    size = serialized_size_bytes(tiny.model)
    resident = model_resident_bytes(tiny.model)
    n = sum(p.numel() for p in tiny.model.parameters()) + sum(b.numel() for b in tiny.model.buffers())
    assert resident == 4 * n  # fp32, no shared storage
    persistent = sum(t.numel() for t in tiny.model.state_dict().values()) * 4  # what the file holds
    assert size - 16 * 1024 < persistent < size  # the file adds its JSON header only
    assert resident - persistent < 1024  # the rotary frequencies, kept out of the state dict


def test_kv_cache_bytes_are_counted_from_the_generate_cache(tiny, tiny_cfg):
    x = torch.randint(3, 256, (2, 16))
    with torch.no_grad():
        out = tiny.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=5, min_new_tokens=5,
                                  do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    head_dim = tiny_cfg.hidden_size // tiny_cfg.num_heads
    # K and V of every layer, fp32, for each token the cache holds (the last generated one is never fed)
    expected = 2 * tiny_cfg.num_layers * tiny_cfg.num_heads * head_dim * 4 * 2 * (16 + 5 - 1)
    assert cache_bytes(out.past_key_values) == expected
    by = {m.name: m for m in resident_memory_metrics(tiny.model, out.past_key_values, peak_bytes=600e6)}
    assert by["memory.kv_cache_bytes"].value == expected
    model = model_resident_bytes(tiny.model)
    assert by["memory.runtime_share"].value == pytest.approx((600e6 - model - expected) / 600e6)
    assert by["memory.runtime_share"].value > RUNTIME_DOMINATED_SHARE
    assert "runtime-dominated" in by["memory.runtime_share"].note
    [share] = [m for m in resident_memory_metrics(tiny.model, peak_bytes=1.1 * model) if m.name.endswith("share")]
    assert "model-dominated" in share.note


def test_warm_up_runs_until_the_timings_settle():
    durations = iter([0.12, 0.08, 0.03, 0.03, 0.03, 0.03])
    w = warm_up(lambda: time.sleep(next(durations)), min_runs=1, max_runs=6, rel_tol=0.25)
    assert w.settled and w.runs == 5 and len(w.times_s) == 5
    assert "5 runs" in w.note


def test_warm_up_says_when_it_never_settled():
    durations = iter([0.01, 0.06] * 3)
    w = warm_up(lambda: time.sleep(next(durations)), min_runs=2, max_runs=6, rel_tol=0.2)
    assert not w.settled and w.runs == 6
    assert "not steady after 6 runs" in w.note
    with pytest.raises(ValueError, match="min_runs"):
        warm_up(lambda: None, min_runs=5, max_runs=2)


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
