"""The CLI as a user runs it: real subprocesses, a temp store, a tiny scenario."""

import json
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
    effbench("run", *FAST, "tags=[demo]", cwd=tmp_path)
    run = store().runs()[0]
    listed = effbench("list", cwd=tmp_path).stdout
    assert run.id[:8] in listed
    shown = effbench("show", run.id[:6], cwd=tmp_path).stdout
    assert "memory.peak_bytes" in shown and "estimated" in shown and run.config_hash[:16] in shown
    assert effbench("show", "zzzz", cwd=tmp_path, check=False).returncode == 2  # bad input

    effbench("export", "runs.json", cwd=tmp_path)
    exported = json.loads((tmp_path / "runs.json").read_text())
    assert [r["id"] for r in exported] == [run.id]
    other = tmp_path / "other"
    other.mkdir()
    (other / "runs.json").write_text(json.dumps(exported))
    assert "imported 1 runs" in effbench("import", "runs.json", cwd=other).stdout
    assert "imported 0 runs" in effbench("import", "runs.json", cwd=other).stdout


def test_help_teaches(tmp_path):
    top = effbench("--help", cwd=tmp_path).stdout
    for word in ("run", "list", "show", "export", "import", "--multirun", "EFFBENCH_DB_URL"):
        assert word in top
    run_help = effbench("run", "--help", cwd=tmp_path).stdout
    for word in ("technique", "fp32", "bf16", "scenario", "rerun=true", "model.id"):
        assert word in run_help
