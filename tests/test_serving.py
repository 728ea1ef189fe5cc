"""Serving load: seeded Poisson arrivals, the batching harness against a
simulated server on a virtual clock (exact, instant), goodput by hand, one
real in-process serving run of the tiny model; and scenario=serve over HTTP
end to end from a composed config: a managed `transformers serve` (this
module's one server), a stub that fails on purpose, a server that is not up,
bad keys of the openai backend."""

import os
import statistics
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from effbench.execute import ConfigError, execute, validate
from effbench.hydra_app import CONFIG_DIR
from effbench.metrics.latency import RequestTiming
from effbench.metrics.record import Status
from effbench.metrics.serving import serving_metrics
from effbench.serving.harness import LoadResult, drive
from effbench.serving.load import ClosedLoop, OpenLoop, make_load, poisson_offsets
from effbench.serving.managed import free_port
from effbench.store import open_store

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
    # Arrivals follow the seeded schedule exactly, every repeat; the server can serve no faster than they
    # come (how close it gets depends on how busy this machine is, so that is not asserted).
    schedule = poisson_offsets(rate, n, seed=0)
    assert r.metric("serve.request_arrival_s").samples == pytest.approx(schedule * 2, abs=1e-9)
    assert min(r.metric("serve.load_duration_s").samples) >= schedule[-1]
    assert 0 < r.metric("serve.requests_per_s").value <= n / schedule[-1]
    assert r.metric("serve.goodput_requests_per_s").value == r.metric("serve.requests_per_s").value  # no SLO
    assert r.metric("serve.output_tokens_per_s").value == pytest.approx(4 * r.metric("serve.requests_per_s").value)
    assert r.metric("memory.peak_bytes").value > 0 and r.metric("energy.joules").value > 0


# ---------------------------------------------------------------- scenario=serve over HTTP, end to end

# The tiny model with the BPE tokenizer a server can load (2 layers × 64).
SERVED_TINY = ["model.tokenizer=bpe", "model.hidden_size=64", "model.intermediate_size=172", "model.num_layers=2",
               "model.num_heads=4", "scenario.prompt_tokens=16", "scenario.output_tokens=8"]
N, RATE = 6, 4.0


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The BPE tokenizer and the saved tiny model in a temporary cache, not results/."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EFFBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def stored(record, url):
    with open_store(url, read_only=True) as store:
        return store.get(record.id)


@pytest.fixture(scope="module")
def served_run(cache, tmp_path_factory):
    """This module's one server: scenario=serve backend=transformers-serve, a
    Poisson load × 2 repeats, a rate sweep and a capacity search in clients,
    read back from its store."""
    d = tmp_path_factory.mktemp("served")
    url = f"sqlite:///{d}/s.db"
    record = execute(compose_cfg(
        "backend=transformers-serve", *SERVED_TINY, f"store.url={url}", f"backend.server.log={d}/server.log",
        f"scenario.num_requests={N}", f"scenario.rate={RATE}", "scenario.repeats=2", "scenario.rates=[1,4]",
        "scenario.slo.ttft_s=null", "scenario.slo.tpot_s=null", "scenario.slo.e2e_s=60", "scenario.slo_target=0.6",
        "scenario.capacity.enabled=true", "scenario.capacity.load=concurrency", "scenario.capacity.start=1",
        "scenario.capacity.max_load=2", "scenario.capacity.requests_per_look=8", "scenario.capacity.max_looks=1"))
    assert record.status is Status.OK, record.error
    return stored(record, url), d


def per_repeat(record, name, repeats):
    samples = record.metric(name).samples
    size = len(samples) // repeats
    return [samples[i * size:(i + 1) * size] for i in range(repeats)]


@pytest.mark.slow
def test_a_managed_server_is_started_on_the_run_model_and_measured(served_run):
    r, d = served_run
    server = r.provenance["server"]
    assert server["managed"] and "transformers serve" in server["command"] and "--continuous-batching" in server["command"]
    assert "--dtype float32 --device cpu" in server["command"]
    assert server["model_path"].startswith(os.environ["EFFBENCH_CACHE"])  # the saved tiny model
    assert r.model == "tiny-llama" and r.config["backend"]["kind"] == "openai"
    assert "served-models" in server["model_path"] and "Uvicorn running" in (d / "server.log").read_text()
    # The server's cost: its process tree; energy not measured on a CPU, and no figure of this process.
    assert "server process tree" in r.metric("memory.peak_bytes").note
    assert r.metric("memory.peak_bytes").value > 100 * 2 ** 20 and r.metric("server.cpu_seconds").value > 0
    assert "energy" in r.provenance["not_measured"] and not any(m.name.startswith("energy.") for m in r.metrics)
    assert not any(m.name.startswith(("compute.flops", "compression.", "model.")) for m in r.metrics)


@pytest.mark.slow
def test_every_served_request_is_counted_and_timed(served_run):
    r, _ = served_run
    assert r.metric("serve.error_rate").samples == [0.0, 0.0]
    assert r.metric("serve.request_output_tokens").samples == [8.0] * 2 * N  # what max_tokens asked
    assert r.metric("serve.request_prompt_tokens").samples == [16.0] * 2 * N  # what the server counted
    ttft, e2e = r.metric("latency.ttft_s").samples, r.metric("latency.e2e_s").samples
    assert len(ttft) == len(e2e) == 2 * N and all(0 < t <= e for t, e in zip(ttft, e2e))
    assert r.metric("latency.itl_s").summary.n == 2 * N * (8 - 1)  # tokens − 1 gaps per request
    # The Poisson schedule, as stored, is the one its seed gives (each repeat the same).
    assert r.metric("serve.request_arrival_s").samples == pytest.approx(poisson_offsets(RATE, N, seed=0) * 2,
                                                                        abs=1e-9)


@pytest.mark.slow
def test_served_goodput_is_the_hand_count_of_the_stored_samples(served_run):
    r, _ = served_run
    e2e = per_repeat(r, "latency.e2e_s", 2)
    durations = r.metric("serve.load_duration_s").samples
    good = [sum(e <= 60 for e in repeat) for repeat in e2e]
    assert r.metric("serve.goodput_requests_per_s").samples == pytest.approx([g / t for g, t in zip(good, durations)])
    assert r.metric("serve.slo_attainment").samples == pytest.approx([g / N for g in good])
    assert r.metric("serve.requests_per_s").samples == pytest.approx([N / t for t in durations])


@pytest.mark.slow
def test_rate_sweep_and_capacity_of_the_server_are_stored(served_run):
    r, _ = served_run
    assert r.metric("serve.sweep_rates").samples == [1.0, 4.0]
    for name in ("serve.sweep_goodput_requests_per_s", "serve.sweep_slo_attainment", "serve.sweep_ttft_p90_s",
                 "serve.sweep_error_rate"):
        assert len(r.metric(name).samples) == 2
    # Every request meets a 60 s bound: both rates pass, the knee is the highest.
    assert r.metric("serve.sweep_slo_attainment").samples == [1.0, 1.0] and r.metric("serve.knee_rate").value == 4
    # 8 of 8 at 1 and at 2 clients: Wilson low end 8 / (8 + 1.96²) = 0.68 ≥ 0.6; 2 is the search's top.
    cap = r.metric("serve.capacity_concurrency")
    assert cap.value == 2 and cap.higher_is_better and "never bracketed" in cap.note


def test_failing_server_requests_are_stored_as_failed_and_the_run_completes(tmp_path):
    """The stub answers requests in turn as ok, ok, HTTP 500, stall: the warm-up
    takes the first ok, then one client sends 6 requests one after the other."""
    from serving_stub import serving, stub_app

    url = f"sqlite:///{tmp_path}/s.db"
    with serving(stub_app(kinds=["ok", "ok", "http500", "stall"])) as server:
        record = execute(compose_cfg(
            "backend=openai", f"backend.url={server}", "backend.request_timeout_s=1", f"store.url={url}",
            "scenario.profile=concurrency", "scenario.concurrency=1", f"scenario.num_requests={N}",
            "scenario.repeats=1", "scenario.prompt_tokens=16", "scenario.output_tokens=4",
            "scenario.slo.ttft_s=null", "scenario.slo.tpot_s=null", "scenario.slo.e2e_s=0.5"))
    r = stored(record, url)
    assert r.status is Status.OK, r.error
    # Load requests 1..6 of the cycle: ok, http500, stall, ok, ok, http500.
    failed = r.provenance["failed_requests"]
    assert [(f["index"], f["error"].split(":")[0], f["http_status"]) for f in failed] == [
        (1, "HTTP 500", 500), (2, "timeout", 200), (5, "HTTP 500", 500)]
    assert r.metric("serve.error_rate").value == pytest.approx(3 / N)
    assert any("3 of 6 requests failed (HTTP 500 ×2, timeout ×1)" in w for w in r.warnings)
    assert r.provenance["server"]["managed"] is False and "remote server" in r.provenance["not_measured"]["memory"]
    # Goodput by hand: answered requests within 0.5 s over the load's duration; failed ones count as missed.
    e2e, duration = r.metric("latency.e2e_s").samples, r.metric("serve.load_duration_s").value
    good = sum(e <= 0.5 for e in e2e)
    assert len(e2e) == 3 and good >= 1
    assert r.metric("serve.goodput_requests_per_s").value == pytest.approx(good / duration)
    assert r.metric("serve.slo_attainment").value == pytest.approx(good / N)
    assert r.metric("serve.request_arrival_s").summary.n == N


def effbench_cli(*args, cwd):
    env = {**os.environ, "EFFBENCH_DB_URL": f"sqlite:///{cwd}/store.db"}
    return subprocess.run([sys.executable, "-m", "effbench.cli", "run", "scenario=serve", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_server_that_is_not_up_exits_2_naming_its_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    out = effbench_cli("backend=openai", f"backend.url={url}", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert f"no server answers at {url}" in out.stderr and "Check that the server is running" in out.stderr
    assert not (tmp_path / "store.db").exists()


def test_a_bad_key_of_the_openai_backend_exits_2(tmp_path):
    out = effbench_cli("backend=transformers-serve", "model.tokenizer=bpe", "backend.server.ready_timeoutt=5",
                       cwd=tmp_path)
    assert out.returncode == 2 and "backend.server.ready_timeoutt" in out.stderr, out.stderr
    assert not (tmp_path / "store.db").exists()


@pytest.mark.parametrize(("overrides", "message"), [
    (["backend=openai"], "exactly one of backend.url"),
    (["backend=transformers-serve", "backend.url=http://127.0.0.1:1"], "exactly one of backend.url"),
    (["backend=transformers-serve"], "model.tokenizer=byte: a server loads"),
    (["backend=transformers-serve", "model.tokenizer=bpe", "backend.request_timeout_s=0"],
     "backend.request_timeout_s=0.0 must be > 0"),
    (["backend=transformers-serve", "model.tokenizer=bpe", "backend.server.port=70000"], "backend.server.port=70000"),
    (["backend=transformers-serve", "model.tokenizer=bpe", "backend.server.command='nosuch-engine {model}'"],
     "'nosuch-engine' is not an executable"),
    (["backend=transformers-serve", "model.tokenizer=bpe", "backend.server.command='{python} {gpu}'"],
     "unknown placeholder 'gpu'"),
    (["backend=transformers-serve", "model.tokenizer=bpe", "technique=bnb-nf4"], "Use a precision technique"),
    (["backend=transformers-serve", "model.tokenizer=bpe", "scenario=inference"], "runs scenario=serve"),
    (["backend=transformers-serve", "model.tokenizer=bpe", "scenario.cache_implementation=static"],
     "manages its own KV cache"),
    (["scenario.rates=[2,2]"], "scenario.rates"),
    (["scenario.slo_target=1.5"], "scenario.slo_target"),
    (["scenario.capacity.enabled=true", "scenario.capacity.requests_per_look=8"],
     "can never show SLO attainment ≥ slo_target=0.9"),
])
def test_bad_serving_backend_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(*overrides))


@pytest.mark.slow
def test_rate_sweep_and_capacity_in_process(tmp_path, cache):
    """The same sweep and search through the in-process backend (static batching)."""
    r = execute(compose_cfg(
        *SERVED_TINY, f"store.url=sqlite:///{tmp_path}/s.db", f"scenario.num_requests={N}", "scenario.repeats=1",
        "scenario.rates=[8,2]", "scenario.slo.ttft_s=null", "scenario.slo.tpot_s=null", "scenario.slo_target=0.6",
        "scenario.capacity.enabled=true", "scenario.capacity.start=2", "scenario.capacity.max_load=4",
        "scenario.capacity.requests_per_look=8", "scenario.capacity.max_looks=1"))
    assert r.status is Status.OK, r.error
    assert r.metric("serve.sweep_rates").samples == [2.0, 8.0] and r.metric("serve.knee_rate").value == 8
    assert r.metric("serve.sweep_slo_attainment").samples == [1.0, 1.0]
    assert r.metric("serve.capacity_rate").value == 4  # every request meets no SLO: the search's top
    assert r.metric("serve.request_arrival_s").samples == pytest.approx(poisson_offsets(4.0, N, seed=0), abs=1e-9)
    assert r.metric("model.parameters").value > 0 and "memory.peak_bytes" in {m.name for m in r.metrics}


# ---------------------------------------------------------------- the BPE tokenizer a server can load

def test_bpe_tokenizer_is_fast_lossless_deterministic_and_cached(tmp_path, monkeypatch):
    from effbench.cache import cache_root
    from effbench.data import load_corpus
    from effbench.models.zoo import BPE_SETTINGS, build_tokenizer

    monkeypatch.setenv("EFFBENCH_CACHE", str(tmp_path / "a"))
    tok = build_tokenizer("bpe")
    assert tok.is_fast and len(tok) == BPE_SETTINGS["vocab_size"]
    # The ids architectures.base.SPECIAL_TOKENS gives every built-in model.
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    text = load_corpus().heldout_text + " naïve — ünïcödé ✓"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text and len(ids) < len(text.encode()) / 2  # merges: far fewer tokens than bytes
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    (trained,) = (cache_root() / "tokenizers").iterdir()
    assert build_tokenizer("bpe").get_vocab() == tok.get_vocab()  # read back from the cache
    monkeypatch.setenv("EFFBENCH_CACHE", str(tmp_path / "b"))  # trained again from scratch: the same vocabulary
    assert build_tokenizer("bpe").get_vocab() == tok.get_vocab()
    assert [p.name for p in (cache_root() / "tokenizers").iterdir()] == [trained.name]


def test_cached_dir_is_built_once_per_settings(tmp_path, monkeypatch):
    from effbench.cache import cached_dir

    monkeypatch.setenv("EFFBENCH_CACHE", str(tmp_path))
    built = []

    def build(d):
        built.append(d)
        (d / "f").write_text("x")

    a = cached_dir("k", "m", {"n": 1}, build)
    assert cached_dir("k", "m", {"n": 1}, build) == a and len(built) == 1 and (a / "f").read_text() == "x"
    b = cached_dir("k", "m", {"n": 2}, build)
    assert b != a and len(built) == 2 and sorted(p.name for p in (tmp_path / "k").iterdir()) == sorted([a.name, b.name])

    def crash(d):
        raise RuntimeError("half-written")

    with pytest.raises(RuntimeError):
        cached_dir("k", "m", {"n": 3}, crash)
    assert len(list((tmp_path / "k").iterdir())) == 2  # nothing half-written left under any name
