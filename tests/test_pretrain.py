"""Pretraining runner: measured training, DDP equivalence, artifacts, failures, presets."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from effbench.config.schema import ArtifactModelConfig
from effbench.execute import ConfigError, execute
from effbench.hydra_app import CONFIG_DIR
from effbench.metrics.quality import heldout_loss
from effbench.metrics.record import Status
from effbench.models import load_model, parameter_counts
from effbench.store import open_store

TINY = ["scenario=pretrain", "model=tiny", "model.hidden_size=64", "model.num_layers=2", "model.intermediate_size=172",
        "hardware.device=cpu", "scenario.token_budget=8192", "scenario.seq_len=64", "scenario.eval_every=5",
        "scenario.warmup_steps=2", "scenario.eval_tokens=2048"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFBENCH_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path


def run(env, *overrides):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"store.url=sqlite:///{env}/s.db", *overrides])
    return execute(cfg)


def test_pretrain_run_measures_training_and_learns(env):
    r = run(env, "scenario.micro_batch_size=4", "technique=gqa", "technique.options.num_kv_heads=2")
    assert r.status is Status.OK, r.error
    assert r.axis == "architecture" and r.scenario == "pretrain"
    # 8192 tokens / (4 rows × 64) = 32 steps: 2 warm-up + 30 measured (6 segments of 5)
    curve = r.metric("quality.train_loss").samples
    assert len(curve) == 2 + 30 and len(r.metric("latency.step_s").samples) == 30
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.5  # it learns real text
    assert len(r.metric("quality.eval_loss").samples) == 6
    tt = r.metric("throughput.train_tokens_per_s")
    step_s = r.metric("latency.step_s").samples
    assert tt.value == pytest.approx(4 * 64 * 30 / sum(step_s), rel=0.05)  # window ≈ sum of its steps
    # Counted FLOPs of a window vs 6·N·tokens: same order, counted ≥ analytic (attention is extra).
    counted, analytic = r.metric("compute.flops").value, r.metric("compute.flops_analytic").value
    assert 1.0 <= counted / analytic < 1.5
    for family in ("memory.peak_bytes", "energy.joules", "compute.mfu", "compute.pcu", "quality.perplexity"):
        r.metric(family)
    assert r.metric("model.parameters").value == r.metric("model.active_parameters").value  # dense


def test_artifact_reloads_by_run_id_with_the_same_weights(env):
    r = run(env, "scenario.micro_batch_size=4")
    assert r.artifact and Path(r.artifact["path"]).is_dir()
    loaded = load_model(ArtifactModelConfig(run_id=r.id[:8], store_url=f"sqlite:///{env}/s.db"))
    assert loaded.name.endswith(r.id[:8])
    # The held-out loss of the reloaded model equals the one the run measured in memory.
    from effbench.data import load_corpus

    ids = loaded.tokenizer(load_corpus().heldout_text, add_special_tokens=False).input_ids[:4096]
    loss, _, _ = heldout_loss(loaded.model, ids, 64, torch.device("cpu"))
    assert loss == pytest.approx(r.metric("quality.loss").value, rel=1e-5)


def test_inference_runner_loads_a_trained_artifact(env):
    trained = run(env, "scenario.micro_batch_size=4")
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=artifact", f"model.run_id={trained.id}", "hardware.device=cpu",
                                           f"store.url=sqlite:///{env}/s.db", "scenario.prompt_tokens=32",
                                           "scenario.output_tokens=8", "scenario.repeats=2"])
    r = execute(cfg)
    assert r.status is Status.OK, r.error
    assert r.model == f"tiny+fp32@{trained.id[:8]}"
    # Trained weights, not random ones: perplexity far below a random model's (~400 on bytes).
    assert r.metric("quality.perplexity").value < 60


def test_tampered_artifact_is_refused(env):
    r = run(env, "scenario.micro_batch_size=4")
    weights = next(Path(r.artifact["path"]).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="changed since it was saved"):
        load_model(ArtifactModelConfig(run_id=r.id, store_url=f"sqlite:///{env}/s.db"))


def test_crash_mid_training_stores_failed_and_no_complete_artifact(env, monkeypatch):
    calls = {"n": 0}
    step = torch.optim.AdamW.step

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("simulated crash at step 7")
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", flaky)
    r = run(env, "scenario.micro_batch_size=4")
    assert r.status is Status.FAILED and "simulated crash at step 7" in r.error
    assert open_store(f"sqlite:///{env}/s.db").get(r.id).status is Status.FAILED
    assert not (env / "artifacts" / r.id).exists()


def test_crash_while_saving_leaves_no_artifact(env, monkeypatch):
    from transformers import ByT5Tokenizer

    def broken(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ByT5Tokenizer, "save_pretrained", broken)
    r = run(env, "scenario.micro_batch_size=4")
    assert r.status is Status.FAILED and "disk full" in r.error
    assert list((env / "artifacts").iterdir()) == []  # neither final nor .partial


@pytest.mark.parametrize("typed", ["710e6566", "1234e12"])
def test_a_run_id_the_command_line_reads_as_a_number_is_refused_with_the_fix(typed):
    from effbench.execute import validate

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=artifact", f"model.run_id={typed}"])
    with pytest.raises(ConfigError, match="quote it"):
        validate(cfg)


def test_invalid_combination_fails_at_config_time(env):
    with pytest.raises(ConfigError, match="num_kv_heads=3 must divide model.num_heads=4"):
        run(env, "technique=gqa", "model.num_heads=4", "technique.options.num_kv_heads=3")
    assert not (env / "s.db").exists() or open_store(f"sqlite:///{env}/s.db").runs() == []


@pytest.mark.parametrize(("preset", "qwen_non_embedding"), [("qwen2.5-0.5b-like", 0.36e9),
                                                            ("qwen2.5-1.5b-like", 1.31e9),
                                                            ("qwen2.5-3b-like", 2.77e9)])
def test_paper_scale_presets_match_qwen25_budgets(preset, qwen_non_embedding):
    """Built on the meta device (no memory): with Qwen2.5's GQA (2 KV heads) the
    non-embedding parameters match the published Qwen2.5 figures."""
    from omegaconf import OmegaConf

    from effbench.models.architectures import build_architecture

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("config", overrides=[f"model={preset}", "technique=gqa"]))
    from effbench.techniques import get_technique

    model_cfg = get_technique("architecture").configure_model(cfg.model, cfg.technique)
    with torch.device("meta"):
        model = build_architecture(model_cfg, vocab_size=384)
    assert parameter_counts(model)["non_embedding"] - 384 * model_cfg.hidden_size == pytest.approx(
        qwen_non_embedding, rel=0.02)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(env):
    """torchrun with the gloo backend: 2 ranks × 2 rows vs 1 process × 4 rows."""
    def cli(*args, torchrun=False):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m"] if torchrun else \
            [sys.executable, "-m"]
        e = {**os.environ, "EFFBENCH_DB_URL": f"sqlite:///{env}/s.db", "OMP_NUM_THREADS": "1"}
        out = subprocess.run([*launcher, "effbench.cli", "run", *TINY, "scenario.save_artifact=false", *args],
                             cwd=env, env=e, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]

    cli("scenario.micro_batch_size=4", "tags=[single]")
    cli("scenario.micro_batch_size=2", "tags=[ddp]", torchrun=True)
    store = open_store(f"sqlite:///{env}/s.db")
    single, ddp = store.runs(tag="single"), store.runs(tag="ddp")
    assert len(single) == 1 and len(ddp) == 1  # rank 0 alone writes
    single, ddp = single[0], ddp[0]
    assert ddp.status is Status.OK, ddp.error
    assert ddp.hardware["world_size"] == 2
    assert ddp.metric("quality.train_loss").samples == pytest.approx(single.metric("quality.train_loss").samples,
                                                                     rel=1e-3)
    assert ddp.metric("memory.peak_bytes").value >= ddp.metric("memory.peak_bytes_rank_mean").value


def test_ranks_combine_by_each_metrics_catalogue_rule():
    from effbench.distributed import Distributed
    from effbench.metrics.catalog import make_metric
    from effbench.metrics.record import Source
    from runners.training import merge_ranks

    def rank(joules, peak, tpj, step):
        return [make_metric("energy.joules", joules, Source.COUNTER, [joules]),
                make_metric("memory.peak_bytes", peak, Source.SAMPLED, [peak]),
                make_metric("energy.tokens_per_joule", tpj, Source.COUNTER, [tpj]),
                make_metric("latency.step_s", step, Source.TIMER, [step])]

    # 2 ranks, 100 tokens in all: rank 0 used 10 J, rank 1 30 J.
    merged = {m.name: m for m in merge_ranks([rank(10, 500, 100 / 10, 0.2), rank(30, 700, 100 / 30, 0.3)],
                                             Distributed(0, 2, 0))}
    assert merged["energy.joules"].value == 40  # summed over devices
    assert merged["memory.peak_bytes"].value == 700 and merged["memory.peak_bytes_rank_mean"].value == 600
    assert merged["energy.tokens_per_joule"].value == pytest.approx(100 / 40)  # all tokens / all joules
    assert merged["latency.step_s"].value == 0.2  # rank 0's view
