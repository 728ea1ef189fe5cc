"""Serving over HTTP: the OpenAI-compatible streaming client and load driver
against a real `transformers serve` (one per module) and a stub server that
fails on purpose; the managed server's lifecycle; the server's cost on a
process of known size; the steady-state window, the knee and the Wilson-based
capacity search on hand-made data."""

import itertools
import math
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

import psutil
import pytest
from omegaconf import OmegaConf
from serving_stub import serving, stub_app

from effbench.hydra_app import CONFIG_DIR
from effbench.metrics.latency import RequestTiming
from effbench.serving.capacity import SweepPoint, find_capacity, knee, load_measure, sweep_point, wilson
from effbench.serving.config import CapacityLoad, Endpoint
from effbench.serving.figures import http_serving_metrics, steady_energy
from effbench.serving.http_load import HttpLoadResult, run_http_load
from effbench.serving.load import ClosedLoop, OpenLoop, Waves, poisson_offsets
from effbench.serving.managed import ManagedServer, ServerStartError, free_port
from effbench.serving.openai_client import (OpenAIStreamClient, ServerUnavailable, StreamedRequest, check_server,
                                            count_chunk_tokens, spread_token_times)
from effbench.serving.prompts import Prompt, exact_token_prompts
from effbench.serving.server_cost import ServerCostTracker
from effbench.serving.steady import steady_window

PROMPT_TOKENS, MAX_TOKENS = 24, 12
# The ready-made transformers serve: its command (with KV-cache caps for a CPU) and the body that disables EOS.
TRANSFORMERS_SERVE = OmegaConf.load(CONFIG_DIR / "backend" / "transformers-serve.yaml")


# ---------------------------------------------------------------- a real transformers serve

@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
    """A tiny Llama with a fast (Rust) tokenizer, which `transformers serve`
    needs: a byte-level BPE trained on the ASCII of the bundled corpus (every
    token decodes to whole characters, so the server streams one per chunk),
    and a chat template. Its EOS is the token it greedily emits first for
    prompt 0, so any request that does not disable EOS ends early."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from effbench.config.schema import BuiltinModelConfig
    from effbench.data import load_corpus
    from effbench.models import load_model

    out = tmp_path_factory.mktemp("served")
    corpus = load_corpus()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    ascii_text = corpus.train_text.encode("ascii", "ignore").decode()
    bpe.train_from_iterator([ascii_text], trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    fast.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    fast.save_pretrained(out)

    loaded = load_model(BuiltinModelConfig(name="tiny-served", hidden_size=64, num_layers=2, num_heads=4,
                                           intermediate_size=172, tokenizer=f"hf:{out}"))
    tok = loaded.tokenizer
    heldout = tok(corpus.heldout_text.encode("ascii", "ignore").decode(), add_special_tokens=False).input_ids
    prompts = exact_token_prompts(tok, heldout, 8, PROMPT_TOKENS, seed=0)
    ids = torch.tensor([tok(prompts[0].text, add_special_tokens=False).input_ids])
    first = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False)[0, -1]
    loaded.model.config.eos_token_id = loaded.model.generation_config.eos_token_id = int(first)
    loaded.model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, tok, prompts


@pytest.fixture(scope="module")
def server(served_model, tmp_path_factory):
    model_dir, _, _ = served_model
    managed = ManagedServer(TRANSFORMERS_SERVE.server.command, model_dir, ready_timeout_s=180, device="cpu",
                            log=tmp_path_factory.mktemp("log") / "serve.log")
    with managed:
        tree = [psutil.Process(managed.pid), *psutil.Process(managed.pid).children(recursive=True)]
        yield managed
    assert not running(tree)


def running(processes):
    def alive(p):
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    return [p for p in processes if alive(p)]


def make_client(url, tok, **kw):
    return OpenAIStreamClient(url, lambda s: len(tok(s, add_special_tokens=False).input_ids),
                              extra_body=dict(TRANSFORMERS_SERVE.extra_body), **kw)


@pytest.fixture(scope="module")
def closed_loop_run(server, served_model):
    _, tok, prompts = served_model
    return run_http_load(make_client(server.url, tok), ClosedLoop(concurrency=3, total=9), prompts, MAX_TOKENS,
                         warmup=2)


@pytest.mark.slow
def test_every_request_streams_the_requested_tokens(closed_loop_run, served_model):
    _, _, prompts = served_model
    run = closed_loop_run
    assert len(run.results) == 9 and run.failed_count == 0, [r.error for r in run.failed]
    assert [r.index for r in run.results] == list(range(9))
    for r in run.results:
        t = r.timing()
        assert r.output_tokens == MAX_TOKENS and r.finish_reason == "length"
        assert r.token_source.startswith("usage")
        assert r.server_prompt_tokens == r.prompt_tokens == prompts[0].server_tokens  # the server saw what we meant
        assert 0 < t.ttft <= t.e2e and len(t.itl) == MAX_TOKENS - 1
        assert t.tpot == pytest.approx(statistics.fmean(t.itl))
        assert r.arrival - 1e-6 <= r.sent <= r.chunk_times[0] <= r.done  # the event loop may wake a µs early
    # Warm-up requests are answered before the load and kept apart from it.
    assert len(run.warmup) == 2 and all(r.ok and r.index < 0 for r in run.warmup)
    assert max(r.done for r in run.warmup) <= run.start
    got = {m.name: m for m in http_serving_metrics([run], {}, "concurrency")}
    assert got["latency.ttft_s"].summary.n == 9 and got["serve.error_rate"].value == 0
    assert got["serve.request_output_tokens"].samples == [MAX_TOKENS] * 9
    assert got["serve.output_tokens_per_s"].value == pytest.approx(9 * MAX_TOKENS / run.duration_s)
    assert "serve.mean_batch_size" not in got  # the server's batches are not visible over HTTP


@pytest.mark.slow
def test_a_closed_loop_keeps_its_concurrency(closed_loop_run):
    run = closed_loop_run
    first = sorted(run.results, key=lambda r: r.arrival)[:3]
    assert all(r.arrival == run.start for r in first)
    later = [r for r in run.results if r.arrival > run.start]
    done = sorted(r.done for r in run.results)
    # Each later request is sent when one is answered: its arrival is a completion time.
    assert all(any(abs(r.arrival - d) < 1e-9 for d in done) for r in later)


@pytest.mark.slow
def test_goodput_is_the_hand_count_of_stored_requests(closed_loop_run):
    run = closed_loop_run
    stored = [(r.timing().ttft, r.timing().tpot) for r in run.completed]
    ttft_bound = statistics.median(t for t, _ in stored)  # about half meet it
    slos = {"ttft_s": ttft_bound, "tpot_s": 1.0, "e2e_s": None}
    good = sum(t <= ttft_bound and p <= 1.0 for t, p in stored)
    assert 0 < good < len(stored)
    got = {m.name: m.value for m in http_serving_metrics([run], slos, "concurrency")}
    assert got["serve.goodput_requests_per_s"] == pytest.approx(good / run.duration_s)
    assert got["serve.slo_attainment"] == pytest.approx(good / 9)


@pytest.mark.slow
def test_poisson_schedule_is_reproduced_from_its_seed(server, served_model):
    _, tok, prompts = served_model
    rate, n = 6.0, 12
    run = run_http_load(make_client(server.url, tok), OpenLoop(poisson_offsets(rate, n, seed=3)), prompts,
                        MAX_TOKENS)
    assert run.arrivals == pytest.approx(poisson_offsets(rate, n, seed=3), abs=1e-9)
    assert run.failed_count == 0
    # Open loop: sent on schedule (not after an answer), so requests overlap.
    assert max(r.sent - r.arrival for r in run.results) < 0.25
    assert any(b.sent < a.done for a, b in itertools.pairwise(run.results))


@pytest.mark.slow
def test_chat_endpoint_streams_the_requested_tokens(server, served_model):
    _, tok, prompts = served_model
    run = run_http_load(make_client(server.url, tok, endpoint=Endpoint.chat), ClosedLoop(2, 2), prompts, MAX_TOKENS)
    assert run.failed_count == 0, [r.error for r in run.failed]
    assert all(r.output_tokens == MAX_TOKENS and r.prompt_tokens is None for r in run.results)
    assert all(r.server_prompt_tokens > PROMPT_TOKENS for r in run.results)  # the chat template's own tokens


@pytest.mark.slow
def test_without_disabling_eos_the_request_ends_early(server, served_model):
    """The served model's EOS is its first greedy token for prompt 0: the
    extra body is what makes every request do the same work."""
    _, tok, prompts = served_model
    plain = OpenAIStreamClient(server.url, lambda s: len(tok(s, add_special_tokens=False).input_ids))
    run = run_http_load(plain, ClosedLoop(1, 1), prompts[:1], MAX_TOKENS)
    assert run.results[0].ok and run.results[0].finish_reason == "stop" and run.results[0].output_tokens == 1


@pytest.mark.slow
def test_server_cost_of_the_served_model(server, served_model):
    _, tok, prompts = served_model
    tracker = ServerCostTracker(server.pid)
    tracker.begin()
    started = time.perf_counter()
    before = sum(p.cpu_times().user + p.cpu_times().system
                 for p in [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)])
    run = run_http_load(make_client(server.url, tok), ClosedLoop(2, 4), prompts, MAX_TOKENS)
    after = sum(p.cpu_times().user + p.cpu_times().system
                for p in [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)])
    tracker.end(time.perf_counter() - started)
    got = {m.name: m for m in tracker.metrics()}
    assert run.failed_count == 0
    rss = psutil.Process(server.pid).memory_info().rss
    assert got["memory.peak_bytes"].value >= 0.9 * rss
    assert got["server.cpu_seconds"].value == pytest.approx(after - before, abs=0.05)  # psutil ticks: 10 ms
    assert 0 < got["compute.pcu"].value <= 1.0
    assert "energy" in tracker.not_measured


# ---------------------------------------------------------------- a stub that fails on purpose

STUB_PROMPT = [Prompt("hello", 5, 5)]


def test_failed_requests_are_stored_with_their_error_and_counted():
    with serving(stub_app()) as url:
        client = OpenAIStreamClient(url, len, timeout_s=1.0)  # a character is a token here
        run = run_http_load(client, ClosedLoop(concurrency=3, total=12), STUB_PROMPT, 4)
    assert len(run.results) == 12 and run.failed_count == 10 and run.error_rate == pytest.approx(10 / 12)
    errors = sorted(r.error.split(":")[0] for r in run.failed)
    assert errors == sorted(["HTTP 500"] * 2 + ["timeout"] * 2 + ["malformed stream"] * 4 + ["error in stream"] * 2)
    assert all(r.status == 500 for r in run.failed if r.error.startswith("HTTP"))
    stalled = [r for r in run.failed if r.error.startswith("timeout")]
    assert all(0.9 < r.done - r.sent < 2.0 for r in stalled)
    # Answered requests: usage says 8 tokens in 4 chunks of "ab": 2 per chunk, gaps split evenly.
    for r in run.completed:
        assert r.output_tokens == 8 and r.chunk_tokens == [2, 2, 2, 2]
        assert r.token_source == "usage total spread over chunks by their re-encoded length"
        t = r.timing()
        assert len(t.itl) == 7 and t.itl[0] == 0.0  # the first chunk's two tokens arrive together
        assert t.itl[1] == pytest.approx(t.itl[2]) and t.itl[1] > 0
    # A failed request counts against goodput and attainment, and is kept.
    got = {m.name: m.value for m in http_serving_metrics([run], {"e2e_s": 60.0}, "concurrency")}
    assert got["serve.slo_attainment"] == pytest.approx(2 / 12)
    assert got["serve.goodput_requests_per_s"] == pytest.approx(2 / run.duration_s)
    assert got["serve.error_rate"] == pytest.approx(10 / 12)


def test_the_measured_window_holds_the_load_and_not_the_warm_up():
    edges = []

    @contextmanager
    def window():
        edges.append(time.perf_counter())
        yield
        edges.append(time.perf_counter())

    with serving(stub_app(kinds=["ok"])) as url:
        run = run_http_load(OpenAIStreamClient(url, len), ClosedLoop(2, 4), STUB_PROMPT, 3, warmup=2, window=window)
    opened, closed = edges
    assert len(run.warmup) == 2 and len(run.results) == 4 and run.failed_count == 0
    assert max(r.done for r in run.warmup) <= opened <= run.start and run.end <= closed


def test_without_usage_tokens_are_counted_by_the_tokenizer():
    with serving(stub_app(usage=False)) as url:
        run = run_http_load(OpenAIStreamClient(url, len), ClosedLoop(1, 1), STUB_PROMPT, 5)
    r = run.results[0]
    assert r.ok and r.output_tokens == 10 and r.chunk_tokens == [2] * 5 and r.token_source.startswith("tokenizer")
    assert r.server_prompt_tokens is None


def test_batch_profile_sends_the_next_wave_when_the_last_is_answered():
    with serving(stub_app(step_s=0.02)) as url:
        # Only the "ok" requests of the cycle matter for timing; every request ends (answer or error).
        run = run_http_load(OpenAIStreamClient(url, len, timeout_s=0.5), Waves(batch_size=3, total=9), STUB_PROMPT, 3)
    waves = [run.results[i:i + 3] for i in (0, 3, 6)]
    for wave, previous in zip(waves[1:], waves):
        assert len({r.arrival for r in wave}) == 1
        assert wave[0].arrival == pytest.approx(max(r.done for r in previous), abs=1e-9)


def test_a_server_that_is_not_up_names_its_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailable, match=rf"no server answers at {url}.*Check that the server is running"):
        check_server(url)
    with pytest.raises(ServerUnavailable, match=url):
        run_http_load(OpenAIStreamClient(url, len), ClosedLoop(1, 1), STUB_PROMPT, 4)


def test_a_server_that_is_no_openai_server_says_so():
    from fastapi import FastAPI

    with serving(FastAPI()) as url, pytest.raises(ServerUnavailable, match="HTTP 404: not an OpenAI-compatible"):
        check_server(url + "/v1")  # OpenAI's base_url convention is accepted too


# ---------------------------------------------------------------- the managed server's lifecycle

def test_managed_server_starts_answers_and_leaves_no_process(tmp_path):
    # The server forks a child that would outlive a plain kill of the parent.
    command = "bash -c 'sleep 600 & exec {python} -m http.server {port} --bind {host}'"
    with ManagedServer(command, model="unused", ready_path="/", ready_timeout_s=30, log=tmp_path / "s.log") as s:
        tree = [psutil.Process(s.pid), *psutil.Process(s.pid).children(recursive=True)]
        assert len(tree) == 2 and s.url.endswith(str(s.port))
        import httpx

        assert httpx.get(s.url + "/").status_code == 200
    assert not running(tree)


def test_managed_server_that_exits_early_raises_with_its_log(tmp_path):
    command = [sys.executable, "-c", "import sys; print('cannot load model {model}'); sys.exit(3)"]
    with pytest.raises(ServerStartError, match=r"exited with code 3(.|\n)*cannot load model /no/such/dir"):
        ManagedServer(command, "/no/such/dir", ready_timeout_s=30, log=tmp_path / "s.log").start()


def test_managed_server_that_never_gets_ready_times_out_and_is_stopped(tmp_path):
    server = ManagedServer("bash -c 'echo still loading; exec sleep 600'", "m", ready_timeout_s=1.0,
                           log=tmp_path / "s.log")
    with pytest.raises(ServerStartError, match=r"within 1 s(.|\n)*still loading"):
        server.start()
    assert server.process.poll() is not None


def test_unknown_placeholder_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown placeholder 'gpu'.*\{python\}"):
        ManagedServer("serve {gpu}", "m")


# ---------------------------------------------------------------- the server's cost, on known processes

def test_server_cost_sums_the_process_tree(tmp_path):
    """A 'server' holding 150 MB that starts a child holding 100 MB and spins
    its CPU: the tree's RSS peak covers both, its CPU time matches psutil's."""
    mb = 2 ** 20
    code = (f"import subprocess, sys, time; a = b'x' * {150 * mb}; "
            f"c = subprocess.Popen([sys.executable, '-c', \"import time; b = b'y' * {100 * mb}; time.sleep(60)\"]); "
            "t = time.time()\nwhile time.time() - t < 60: pass")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        root = psutil.Process(proc.pid)
        while len(root.children()) < 1 or root.children()[0].memory_info().rss < 100 * mb:
            time.sleep(0.05)
        tracker = ServerCostTracker(proc.pid, interval_s=0.02)
        tree = [root, *root.children(recursive=True)]
        before = sum(p.cpu_times().user + p.cpu_times().system for p in tree)
        tracker.begin()
        t0 = time.perf_counter()
        time.sleep(1.0)
        after = sum(p.cpu_times().user + p.cpu_times().system for p in tree)
        tracker.end(time.perf_counter() - t0)
        rss = sum(p.memory_info().rss for p in tree)
    finally:
        for p in psutil.Process(proc.pid).children(recursive=True):
            p.kill()
        proc.kill()
        proc.wait()
    got = {m.name: m for m in tracker.metrics()}
    assert got["memory.peak_bytes"].value >= 250 * mb and got["memory.peak_bytes"].value == pytest.approx(rss, rel=0.05)
    assert got["server.cpu_seconds"].value == pytest.approx(after - before, abs=0.05)
    assert got["server.cpu_seconds"].value > 0  # it spun (how much CPU it got depends on the other load)
    assert "processes" in got["server.cpu_seconds"].note and tracker.tree.seen == {p.pid for p in tree}


class ConstantGpus:
    """Two GPUs drawing 60 + 40 W at 50% utilization: their energy counters advance 100 J per second."""

    indices = [0, 1]

    def power_w(self):
        return 100.0

    def utilization(self):
        return 50.0

    def memory_used(self):
        return 3e9

    def total_energy_j(self):
        return 5e6 + 100.0 * time.perf_counter()


def test_gpu_energy_from_counters_over_the_window_and_power_over_a_short_span():
    tracker = ServerCostTracker(os.getpid(), gpus=ConstantGpus(), interval_s=0.02)
    tracker.begin()
    t0 = time.perf_counter()
    time.sleep(1.5)
    tracker.end(time.perf_counter() - t0)
    tracker.add_tokens(300)
    got = {m.name: m for m in tracker.metrics()}
    span = tracker._sampler.times[-1] - tracker._sampler.times[0]
    assert got["energy.joules"].value == pytest.approx(100.0 * span, rel=1e-2)  # read µs after each time stamp
    assert got["energy.joules"].source.value == "counter" and "counters of GPUs [0, 1]" in got["energy.joules"].note
    assert got["energy.avg_power_w"].value == pytest.approx(100.0, rel=0.03)
    assert got["energy.joules_per_token"].value == pytest.approx(got["energy.joules"].value / 300)
    assert got["compute.pcu"].value == pytest.approx(0.5) and got["memory.device_peak_bytes"].value == 3e9
    assert "server.rss_peak_bytes" in got and "memory.peak_bytes" not in got and "energy" not in tracker.not_measured
    # A span shorter than the counters' resolution: sampled power × time instead.
    a = tracker._sampler.times[10]
    joules, how = tracker.energy_between(a, a + 0.5)
    assert joules == pytest.approx(50.0) and "power" in how


def test_a_remote_server_is_not_measured():
    tracker = ServerCostTracker(None, remote="http://gpu-box:8000")
    tracker.begin()
    tracker.end(1.0)
    assert tracker.metrics() == []
    assert set(tracker.not_measured) == {"memory", "cpu", "energy", "compute.pcu"}
    assert "remote server at http://gpu-box:8000" in tracker.not_measured["energy"]
    assert tracker.energy_between(0.0, 1.0) is None


# ---------------------------------------------------------------- token counting, steady state

def test_chunk_token_rules():
    assert count_chunk_tokens(["a", "b"], 2, len) == ([1, 1], "usage: one token per chunk")
    counts, how = count_chunk_tokens(["abc", "d", "ef"], 10, len)  # tokenizer says 3 + 1 + 2, server 10
    assert counts == [6, 1, 3]  # one each, then 7 more in proportion 2 : 0 : 1 (largest remainder) and how.startswith("usage total spread")
    assert count_chunk_tokens(["abc"], None, len)[0] == [3]
    assert spread_token_times([1.0, 2.0, 2.6], [2, 2, 3]) == pytest.approx([1.0, 1.0, 1.5, 2.0, 2.2, 2.4, 2.6])


def synthetic(token_times_per_request):
    return [RequestTiming(0.0, list(t)) for t in token_times_per_request]


def test_steady_window_by_hand():
    # Running (first → last token): A 1–4, B 2–6, C 4.5–7, D 6.5–8. The count
    # first reaches its peak 2 at t=2; the last first token is D's (6.5); the
    # first completion at or after it is C's at 7.
    requests = synthetic([[1, 2, 3, 4], [2, 3, 4, 5, 6], [4.5, 5, 6, 7], [6.5, 7, 8]])
    w = steady_window(requests)
    assert (w.start, w.end, w.peak_running) == (2, 7, 2)
    # 2 on [2,4), 1 on [4,4.5), 2 on [4.5,6), 1 on [6,6.5), 2 on [6.5,7): 9 request-seconds over 5 s.
    assert w.mean_running == pytest.approx(9 / 5)
    # Tokens in [2, 7): A 2,3,4; B 2..6; C 4.5,5,6; D 6.5.
    assert w.tokens == 12 and w.tokens_per_s == pytest.approx(12 / 5)
    assert steady_window(synthetic([[1.0], [2.0]])) is None  # single tokens: no decode phase, no batch


def test_steady_energy_per_token_by_hand():
    times = [[1, 2, 3, 4], [2, 3, 4, 5, 6], [4.5, 5, 6, 7], [6.5, 7, 8]]
    results = [StreamedRequest(i, 0.0, 10, 5, sent=0.0, chunk_times=list(t), chunk_tokens=[1] * len(t), done=t[-1],
                               token_source="usage: one token per chunk", output_tokens=len(t), finish_reason="length")
               for i, t in enumerate(times)]
    run = HttpLoadResult(results, start=0.0, end=8.0)
    power_w = 10.0
    joules, how = steady_energy(run, lambda t0, t1: (power_w * (t1 - t0), "NVML total-energy counters of GPUs [0]"))
    assert joules == pytest.approx(50.0)
    got = {m.name: m for m in http_serving_metrics([run], {}, "concurrency", [(joules, how)])}
    assert got["energy.steady_joules_per_token"].value == pytest.approx(50.0 / 12)
    assert got["energy.steady_joules_per_token"].source.value == "counter"
    assert got["serve.steady_output_tokens_per_s"].value == pytest.approx(12 / 5)
    assert got["serve.output_tokens_per_s"].value == pytest.approx(16 / 8)  # the whole window, drain included


# ---------------------------------------------------------------- the knee and the capacity search

def test_knee_is_the_highest_rate_before_the_first_miss():
    def point(rate, attainment):
        return SweepPoint(rate, goodput_rps=rate * attainment, attainment=attainment, ttft_p90_s=0.1, error_rate=0.0)

    points = [point(1, 1.0), point(2, 0.95), point(4, 0.85), point(8, 0.92)]  # 8 passes by luck after 4 missed
    assert knee(points, target=0.9) == 2
    assert knee([point(1, 0.5)], target=0.9) is None


def test_sweep_point_counts_failures_against_attainment():
    answered = synthetic([[0.1, 0.2], [0.5, 0.6], [0.2, 0.3]])

    class Run:
        requests, batch_sizes, failed_count, duration_s = answered, [], 1, 2.0

    p = sweep_point(4.0, Run(), {"ttft_s": 0.3})
    assert (p.goodput_rps, p.attainment, p.error_rate) == (1.0, 0.5, 0.25)
    assert p.ttft_p90_s == pytest.approx(0.44)  # numpy's linear interpolation of 0.1, 0.2, 0.5


def test_wilson_interval_matches_its_formula():
    good, n, z = 45, 50, 1.959963984540054
    p = good / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson(good, n, 0.95) == pytest.approx(((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)))


def simulated(attainment_at, n=200, seed=0):
    """A server whose SLO attainment at a load is attainment_at(load): each look draws n requests."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return lambda load, look: (int(rng.binomial(n, attainment_at(load))), n)


def test_capacity_search_on_a_simulated_server_whose_attainment_falls_with_load():
    def attainment(rate):  # all good up to 4 req/s, then 10 points lost per req/s
        return 1.0 if rate <= 4 else max(0.0, 1.0 - 0.1 * (rate - 4))

    cap = find_capacity(simulated(attainment), start=1.0, max_load=64, target=0.9, confidence=0.95, rel_tol=0.05)
    # 5 req/s has attainment exactly 0.9: never shown to meet it; 4 is certain.
    assert 4 <= cap.load < 5 and cap.bracketed and cap.kind is CapacityLoad.rate
    assert [look.load for look in cap.looks][:4] == [1, 2, 4, 8]  # doubling brackets [4, 8]
    for look in cap.looks:
        if look.verdict == "meets":
            assert look.low >= 0.9 and attainment(look.load) > 0.9
        if look.verdict == "misses":
            assert look.high < 0.9
    # The interval of a load's first look is the Wilson interval of that look alone.
    first = cap.looks[0]
    assert (first.low, first.high) == pytest.approx(wilson(first.good, first.n, 0.95))
    metric = cap.metric()
    assert metric.name == "serve.capacity_rate" and metric.value == cap.load and "Wilson" in metric.note


def test_capacity_in_clients_is_exact_when_attainment_is_a_step():
    cap = find_capacity(simulated(lambda c: 1.0 if c <= 6 else 0.5, n=64), kind=CapacityLoad.concurrency, start=2,
                        max_load=64, target=0.9, confidence=0.95)
    assert cap.load == 6 and cap.bracketed and cap.metric().name == "serve.capacity_concurrency"
    assert [look.load for look in cap.looks] == [2, 4, 8, 6, 7]


def test_undecided_loads_count_as_misses_and_an_unbracketed_search_says_so():
    def exactly_the_target(load, look):  # 45 of 50 every look: the interval straddles 0.9 however many looks
        return 45, 50

    cap = find_capacity(exactly_the_target, start=1, max_load=4, target=0.9, max_looks=2)
    assert cap.load is None and all(look.verdict == "undecided" for look in cap.looks)
    assert [look.load for look in cap.looks][:4] == [1, 1, 0.5, 0.5] and len(cap.looks) == 14  # down to 1/64
    with pytest.raises(ValueError, match="no load tried meets"):
        cap.metric()
    cap = find_capacity(simulated(lambda r: 1.0), start=1, max_load=4, target=0.9)
    assert cap.load == 4 and not cap.bracketed and "never bracketed" in cap.how


def test_capacity_search_drives_a_server_through_load_measure():
    with serving(stub_app(kinds=["ok"])) as url:
        client = OpenAIStreamClient(url, len)
        measure = load_measure(lambda load: run_http_load(client, load, STUB_PROMPT, 2), {"e2e_s": 10.0},
                               CapacityLoad.concurrency, requests_per_look=16, seed=0)
        cap = find_capacity(measure, kind=CapacityLoad.concurrency, start=1, max_load=4, target=0.8)
    # 16 of 16 meet the SLO at every load: Wilson low end 16 / (16 + 1.96²) = 0.806 ≥ 0.8.
    assert [(look.load, look.n, look.good, look.verdict) for look in cap.looks] == [
        (1, 16, 16, "meets"), (2, 16, 16, "meets"), (4, 16, 16, "meets")]
    assert cap.load == 4 and not cap.bracketed
