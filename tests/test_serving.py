"""Serving load: seeded Poisson arrivals, the batching harness against a
simulated server on a virtual clock (exact, instant), goodput by hand, and
one real serving run of the tiny model."""

import statistics

import pytest
from hydra import compose, initialize_config_dir

from effbench.execute import ConfigError, execute, validate
from effbench.hydra_app import CONFIG_DIR
from effbench.metrics.latency import RequestTiming
from effbench.metrics.record import Status
from effbench.metrics.serving import serving_metrics
from effbench.serving.harness import LoadResult, drive
from effbench.serving.load import ClosedLoop, OpenLoop, make_load, poisson_offsets

class VirtualServer:
    """Serves a batch in `steps` output steps of `step_s` each on a virtual clock."""

    def __init__(self, steps=4, step_s=0.01):
        self.now, self.steps, self.step_s = 0.0, steps, step_s

    def clock(self):
        return self.now

    def sleep(self, dt):
        self.now += dt

    def __call__(self, request_ids):
        times = [self.now + self.step_s * (i + 1) for i in range(self.steps)]
        self.now = times[-1]
        return times

    def drive(self, load, max_batch):
        return drive(load, self, max_batch, clock=self.clock, sleep=self.sleep)


def test_poisson_arrivals_are_reproducible_from_the_seed():
    a, b, c = poisson_offsets(4.0, 100, seed=7), poisson_offsets(4.0, 100, seed=7), poisson_offsets(4.0, 100, seed=8)
    assert a == b and a != c
    assert a[0] == 0.0 and all(x < y for x, y in zip(a, a[1:])) and len(a) == 100


def test_poisson_gaps_are_exponential_at_rate_lambda():
    rate, n = 5.0, 20_000
    t = poisson_offsets(rate, n, seed=0)
    gaps = [y - x for x, y in zip(t, t[1:])]
    assert (n - 1) / t[-1] == pytest.approx(rate, rel=0.03)  # σ/λ = 1/√n ≈ 0.7%
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, abs=0.03)  # exponential: CV = 1
    assert sum(g > 1 / rate for g in gaps) / len(gaps) == pytest.approx(0.3679, abs=0.01)  # P(gap > mean) = 1/e


def test_light_poisson_load_is_served_at_the_arrival_rate():
    rate, n = 20.0, 1000
    server = VirtualServer(steps=4, step_s=0.002)  # 8 ms per request ≪ 50 ms mean gap
    result = server.drive(OpenLoop(poisson_offsets(rate, n, seed=1)), max_batch=8)
    served_rate = len(result.requests) / result.duration_s
    assert served_rate == pytest.approx(rate, rel=0.1)  # 3σ of the realised rate at n = 1000
    assert [r.start - result.start for r in result.requests] == poisson_offsets(rate, n, seed=1)


def test_closed_loop_serves_concurrency_per_batch_time():
    server = VirtualServer(steps=5, step_s=0.01)  # 50 ms a batch
    result = server.drive(ClosedLoop(concurrency=4, total=40), max_batch=4)
    assert result.batch_sizes == [4] * 10
    assert len(result.requests) / result.duration_s == pytest.approx(4 / 0.05)
    assert all(r.ttft == pytest.approx(0.01) and r.e2e == pytest.approx(0.05) for r in result.requests)


def test_queueing_shows_in_ttft_when_concurrency_exceeds_the_batch_cap():
    server = VirtualServer(steps=5, step_s=0.01)
    result = server.drive(ClosedLoop(concurrency=4, total=4), max_batch=2)
    assert result.batch_sizes == [2, 2]
    # The second pair arrived at 0 and waited for the first batch (50 ms).
    assert [r.ttft for r in result.requests] == pytest.approx([0.01, 0.01, 0.06, 0.06])


def test_overload_grows_batches_up_to_the_cap():
    server = VirtualServer(steps=10, step_s=0.01)  # 100 ms a batch, arrivals every 10 ms on average
    result = server.drive(OpenLoop(poisson_offsets(100.0, 200, seed=0)), max_batch=8)
    assert max(result.batch_sizes) == 8 and statistics.fmean(result.batch_sizes) > 6
    assert sum(result.batch_sizes) == 200


def test_fixed_batch_profile_is_a_closed_loop_of_its_batch_size():
    load = make_load("batch", num_requests=12, batch_size=3, concurrency=99, rate=1.0, seed=0)
    assert VirtualServer().drive(load, max_batch=3).batch_sizes == [3, 3, 3, 3]
    with pytest.raises(ValueError, match="batch, concurrency or poisson"):
        make_load("burst", num_requests=1, batch_size=1, concurrency=1, rate=1.0, seed=0)


def test_goodput_and_slo_attainment_by_hand():
    # ttft, then 3 more tokens 0.1 apart (tpot 0.1) — or 0.3 apart for the slow one.
    fast = [RequestTiming(0.0, [0.2, 0.3, 0.4, 0.5]), RequestTiming(0.0, [0.5, 0.6, 0.7, 0.8])]
    slow = [RequestTiming(0.0, [0.2, 0.5, 0.8, 1.1])]
    run = LoadResult(fast + slow, batch_sizes=[1, 2], start=0.0, end=2.0)
    got = {m.name: m.value for m in serving_metrics([run], {"ttft_s": 0.3, "tpot_s": 0.15, "e2e_s": None}, "poisson")}
    # Only the first meets both bounds (the second's TTFT is 0.5, the third's TPOT 0.3).
    assert got["serve.goodput_requests_per_s"] == pytest.approx(1 / 2.0)
    assert got["serve.slo_attainment"] == pytest.approx(1 / 3)
    assert got["serve.requests_per_s"] == pytest.approx(3 / 2.0)
    assert got["serve.output_tokens_per_s"] == pytest.approx(12 / 2.0)
    assert got["serve.mean_batch_size"] == pytest.approx(1.5)
    no_slo = {m.name: m.value for m in serving_metrics([run], {}, "poisson")}
    assert no_slo["serve.goodput_requests_per_s"] == no_slo["serve.requests_per_s"]


def compose_cfg(*overrides):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=["scenario=serve", "hardware.device=cpu", *overrides])


@pytest.mark.parametrize(("override", "message"), [
    ("scenario.rate=0", "scenario.rate"), ("scenario.max_batch_size=0", "scenario.max_batch_size"),
    ("scenario.slo.ttft_s=-1", "scenario.slo.ttft_s")])
def test_bad_serving_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(override))


def test_unknown_profile_lists_the_choices():
    with pytest.raises(Exception, match="scenario.profile=burst") as e:
        compose_cfg("scenario.profile=burst")
    assert "batch, concurrency, poisson" in str(e.value.__cause__)


def test_a_real_serving_run_of_the_tiny_model(tmp_path):
    n, rate = 16, 8.0
    r = execute(compose_cfg(f"store.url=sqlite:///{tmp_path}/s.db", f"scenario.num_requests={n}",
                            f"scenario.rate={rate}", "scenario.output_tokens=4", "scenario.prompt_tokens=32",
                            "scenario.repeats=2", "model.hidden_size=64", "model.intermediate_size=172",
                            "scenario.slo.ttft_s=null", "scenario.slo.tpot_s=null"))
    assert r.status is Status.OK, r.error
    assert r.scenario == "serve" and r.metric("latency.ttft_s").summary.n == 2 * n
    assert r.metric("serve.requests_per_s").summary.n == 2
    # A tiny model answers 4 tokens in milliseconds: requests leave about as they arrive.
    schedule = poisson_offsets(rate, n, seed=0)
    assert r.metric("serve.requests_per_s").value == pytest.approx(n / schedule[-1], rel=0.15)
    assert r.metric("serve.goodput_requests_per_s").value == r.metric("serve.requests_per_s").value  # no SLO
    assert r.metric("serve.output_tokens_per_s").value == pytest.approx(4 * r.metric("serve.requests_per_s").value)
    assert r.metric("memory.peak_bytes").value > 0 and r.metric("energy.joules").value > 0
