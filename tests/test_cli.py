"""The CLI as a user runs it: real subprocesses, a temp store, a tiny scenario."""

import csv
import json
import logging
import os
import subprocess
import sys

import pytest

from effbench.metrics.record import Source, Status
from effbench.store import open_store

FAST = ["scenario.prompt_tokens=32", "scenario.output_tokens=8", "scenario.repeats=2", "scenario.warmup=1",
        "scenario.eval_max_tokens=2048", "scenario.eval_context=128", "model.hidden_size=64", "model.num_layers=2",
        "model.intermediate_size=172", "hardware.device=cpu"]
FAMILIES = {"memory", "compute", "latency", "throughput", "energy", "compression", "quality"}


def effbench(*args, cwd, check=True):
    env = {**os.environ, "EFFBENCH_DB_URL": f"sqlite:///{cwd}/store.db"}
    out = subprocess.run([sys.executable, "-m", "effbench.cli", *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture
def store(tmp_path):
    return lambda: open_store(f"sqlite:///{tmp_path}/store.db")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("technique=fp8", ["technique/fp8", "fp32", "bf16", "fp16"]),
        ("scenario.repeatz=3", ["scenario.repeatz", "repeats", "batch_size"]),
        ("scenario.repeats=many", ["scenario.repeats", "many"]),
        ("technique.dtype=float33", ["technique.dtype", "float32, bfloat16, float16"]),
        ("scenario.output_tokens=1", ["scenario.output_tokens"]),
        ("scenario.eval_max_tokens=64", ["scenario.eval_max_tokens=64", "scenario.eval_context=256"]),
    ],
)
def test_bad_config_exits_2_naming_the_key(tmp_path, override, expected):
    out = effbench("run", override, cwd=tmp_path, check=False)
    assert out.returncode == 2, out.stderr
    for text in expected:
        assert text in out.stderr
    assert not (tmp_path / "store.db").exists() or not open_store(f"sqlite:///{tmp_path}/store.db").runs()


@pytest.mark.slow
def test_multirun_of_three_pairs_stores_every_family(tmp_path, store):
    out = effbench("run", "--multirun", "technique=fp32,bf16,fp16", *FAST, cwd=tmp_path)
    runs = store().runs()
    assert sorted(r.technique for r in runs) == ["bf16", "fp16", "fp32"]
    for r in runs:
        assert r.status is Status.OK, r.error
        assert {m.name.split(".")[0] for m in r.metrics} >= FAMILIES
        assert r.metric("energy.joules").source in (Source.COUNTER, Source.ESTIMATED)
        assert r.metric("latency.e2e_s").summary.n == 2  # one sample per repeat
        assert r.hardware["cpu_cores"] >= 1 and r.software["torch"]
        assert r.config["technique"]["name"] == r.technique and r.sweep_id
    ratios = {r.technique: r.metric("compression.ratio").value for r in runs}
    assert ratios == pytest.approx({"fp32": 1.0, "bf16": 2.0, "fp16": 2.0}, rel=0.01)
    assert "effbench results" in out.stdout and "tiny-llama × bf16" in out.stdout  # the printed table
    assert_plain(out)

    # compare: bf16's weights are half fp32's (exact figures: a real difference); their perplexities
    # differ by far less than perplexity's 1% threshold (a tie).
    by = {r.technique: r for r in runs}
    fp32, bf16 = by["fp32"], by["bf16"]
    ppl = bf16.metric("quality.perplexity").value / fp32.metric("quality.perplexity").value
    assert abs(ppl - 1) < 0.01
    shown = effbench("compare", fp32.id[:8], bf16.id[:8], cwd=tmp_path).stdout
    rows = {line.split()[0]: line for line in shown.splitlines() if line.strip()}
    assert "✓ ×0.5" in rows["compression.size_bytes"] and "~ ×1" in rows["quality.perplexity"]
    assert f"baseline tiny-llama × fp32 · inference · {fp32.id[:8]}" in shown

    # A second sweep finds the three pairs done and measures nothing new.
    again = effbench("run", "--multirun", "technique=fp32,bf16,fp16", *FAST, cwd=tmp_path)
    assert len(store().runs()) == 3
    assert "skip" in again.stderr + again.stdout


@pytest.mark.slow
def test_a_crashing_pair_is_stored_failed_and_the_sweep_goes_on(tmp_path, store):
    # prompt_tokens=10**7 is longer than the held-out text: the runner raises.
    out = effbench("run", "--multirun", "scenario.prompt_tokens=32,10000000", *FAST[1:], cwd=tmp_path)
    runs = {r.config["scenario"]["prompt_tokens"]: r for r in store().runs()}
    assert runs[32].status is Status.OK
    assert runs[10_000_000].status is Status.FAILED
    assert "ValueError" in runs[10_000_000].error and "prompt_tokens=10000000" in runs[10_000_000].error
    assert runs[10_000_000].metrics == []
    assert "failed" in out.stdout + out.stderr


@pytest.mark.slow
def test_list_show_export_import(tmp_path, store):
    out = effbench("run", *FAST, "tags=[demo]", cwd=tmp_path)
    run = store().runs()[0]
    # A single run prints its table, plain text when piped: no colour codes, no progress bars.
    assert "effbench results" in out.stdout and run.id[:8] in out.stdout and "± half-width" in out.stdout
    assert "n<6" in out.stdout  # two repeats: no interval for the median, and none invented
    assert_plain(out)
    listed = effbench("list", cwd=tmp_path).stdout
    assert run.id[:8] in listed
    table = [line for line in listed.splitlines() if run.id[:8] in line or "──" in line]
    assert table and max(len(line) for line in table) <= 100  # the default columns fit 100 columns
    rows = json.loads(effbench("list", "--json", "--columns", "id,technique,engine,AL,latency.ttft_s",
                               cwd=tmp_path).stdout)
    assert [r["id"] for r in rows] == [run.id] and rows[0]["engine"] == "hf (in-process)"
    al = rows[0]["AL"]
    assert al["metric"] == "latency.e2e_s" and al["value"] == run.metric("latency.e2e_s").value
    assert al["n"] == 2 and al["median_ci95"] is None and al["unit"] == "s"
    bad = effbench("list", "--columns", "id,bogus", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "'bogus'" in bad.stderr and "AL" in bad.stderr
    shown = effbench("show", run.id[:6], cwd=tmp_path).stdout
    assert "memory.peak_bytes" in shown and "estimated" in shown and run.config_hash[:16] in shown
    assert "◔ memory.peak_bytes" in shown and "runtime-dominated" in shown  # a CPU peak is the runtime's
    assert effbench("show", "zzzz", cwd=tmp_path, check=False).returncode == 2  # bad input

    effbench("export", "runs.json", cwd=tmp_path)
    exported = json.loads((tmp_path / "runs.json").read_text())
    assert [r["id"] for r in exported] == [run.id]
    effbench("export", "wide.csv", "--wide", cwd=tmp_path)
    wide = list(csv.DictReader(open(tmp_path / "wide.csv")))
    assert len(wide) == 1 and wide[0]["id"] == run.id
    assert wide[0]["config.scenario.prompt_tokens"] == "32" and wide[0]["hardware.label"] == run.hardware["label"]
    assert float(wide[0]["latency.e2e_s"]) == run.metric("latency.e2e_s").value
    assert wide[0]["latency.e2e_s:n"] == "2" and wide[0]["latency.e2e_s:low"] == ""  # n < 6: no interval
    assert effbench("export", "wide.json", "--wide", cwd=tmp_path, check=False).returncode == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "runs.json").write_text(json.dumps(exported))
    assert "imported 1 runs" in effbench("import", "runs.json", cwd=other).stdout
    assert "imported 0 runs" in effbench("import", "runs.json", cwd=other).stdout


def assert_plain(out) -> None:
    """Output to a pipe holds no terminal escapes, no progress bars and no library noise."""
    text = out.stdout + out.stderr
    assert "\x1b" not in text and "\r" not in text
    for noise in ("_C_mxfp8", "_pytree", "No module named 'kernels'", "it/s]"):
        assert noise not in text


def test_a_store_that_does_not_exist_yet_is_one_line(tmp_path):
    out = effbench("list", cwd=tmp_path, check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert str(tmp_path / "store.db") in out.stderr
    assert "effbench run" in out.stderr and "Traceback" not in out.stderr


def test_help_teaches(tmp_path):
    top = effbench("--help", cwd=tmp_path).stdout
    for word in ("run", "list", "show", "compare", "export", "import", "--multirun", "EFFBENCH_DB_URL"):
        assert word in top
    run_help = effbench("run", "--help", cwd=tmp_path).stdout
    for word in ("technique", "fp32", "bf16", "scenario", "rerun=true", "model.id", "Config groups"):
        assert word in run_help
    assert "dtype: bfloat16" in effbench("run", "technique=bf16", "--help", cwd=tmp_path).stdout  # overrides shown


@pytest.mark.parametrize("argv", [["run", "--help"], ["run", "technique=fp8"]])
def test_help_and_a_typo_answer_without_torch(tmp_path, argv):
    """`effbench run --help` and a bad option are answered from the configs alone: no torch
    import (seconds on a busy machine). Timed here as a smoke check; benchmarks of the CLI's
    own speed belong on a quiet machine."""
    code = ("import sys, time; from effbench.cli import main; t = time.perf_counter(); rc = main(sys.argv[1:]); "
            "print('RESULT', rc, 'torch' in sys.modules, time.perf_counter() - t, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "EFFBENCH_DB_URL": f"sqlite:///{tmp_path}/s.db"})
    rc, torch, seconds = out.stderr.split("RESULT ")[1].split()
    assert (rc, torch) == ("0" if "--help" in argv else "2", "False")
    assert float(seconds) < 10


def test_library_noise_is_filtered_at_its_source(tmp_path, caplog):
    """torchao's and bitsandbytes' import-time messages and torch's pytree deprecation say
    nothing to a user: effbench.quiet drops them at their loggers (and nothing else)."""
    code = ("import sys; from effbench import quiet; quiet.install() if sys.argv[1] == 'quiet' else None; "
            "import torchao, bitsandbytes; import logging; logging.getLogger('torchao').warning('kept')")
    noise = ("_C_mxfp8", "_C_cutlass_90a", "is an Enum subclass", "gemm_4bit_forward from kernels-community")
    loud, quiet = (subprocess.run([sys.executable, "-c", code, mode], cwd=tmp_path, capture_output=True, text=True,
                                  timeout=300).stderr for mode in ("loud", "quiet"))
    assert "kept" in quiet  # other messages of the same loggers pass
    assert not [n for n in noise if n in quiet], quiet
    # bitsandbytes' per-call int8 cast warning: said once, not on every matmul.
    from effbench import quiet as q

    logger = logging.getLogger("bitsandbytes.autograd._functions")
    logger.filters.clear()  # a fresh filter: an earlier run in this process may have said it already
    q.install()
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(3):
            logger.warning("MatMul8bitLt: inputs will be cast from %s to float16 during quantization", "float32")
    assert [r.getMessage() for r in caplog.records].count(
        "MatMul8bitLt: inputs will be cast from float32 to float16 during quantization") == 1
    if not any(n in loud for n in noise):
        pytest.skip("these libraries print none of the filtered messages here")
