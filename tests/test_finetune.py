"""Fine-tuning axis: trainable counts per method, step-0 behaviour, learning on
a trained checkpoint, memory of LoRA vs full, adapter reload, config-time checks."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from effbench.config.schema import ArtifactModelConfig, BuiltinModelConfig
from effbench.data.sft import IGNORE_INDEX, encode, format_example, load_sft, pydoc_sft
from effbench.execute import ConfigError, execute
from effbench.hydra_app import CONFIG_DIR
from effbench.metrics.record import Status
from effbench.models import load_model
from effbench.store import open_store
from effbench.techniques import get_technique
from runners.sft import response_loss, spread

METHODS = ["lora", "rslora", "dora", "pissa", "loraplus", "qlora", "freeze", "full"]
PRETRAIN = ["scenario=pretrain", "model=tiny", "model.hidden_size=64", "model.num_layers=2",
            "model.intermediate_size=172", "technique=mha", "scenario.token_budget=8192", "scenario.seq_len=64",
            "scenario.micro_batch_size=8", "scenario.eval_every=10", "scenario.warmup_steps=2",
            "scenario.eval_tokens=2048"]
SEQ, FINAL = 256, 24
FINETUNE = ["scenario=finetune", "model=artifact", f"scenario.seq_len={SEQ}", "scenario.micro_batch_size=4",
            "scenario.max_steps=8", "scenario.warmup_steps=2", "scenario.eval_every=3", "scenario.eval_samples=8",
            f"scenario.final_eval_samples={FINAL}", "scenario.lr_warmup_steps=1"]
# Eight steps are few: adapters get a larger learning rate than their YAML defaults (LoRA+ multiplies B's by 16).
# LoRA also runs lm-eval on the trained model (the quality step): two pydoc topics' rolling perplexity.
QUALITY = ["quality.tasks=[effbench_pydoc_ppl]", "quality.limit=2"]
EXTRA = {"lora": ["technique.lr=1e-2", *QUALITY], "rslora": ["technique.lr=1e-2", "scenario.merge_adapter=true"],
         "dora": ["technique.lr=1e-2"], "pissa": ["technique.lr=3e-3"], "loraplus": ["technique.lr=2e-3"],
         "qlora": ["technique.lr=1e-2"], "freeze": ["technique.top_layers=1"], "full": []}


def compose_cfg(db, *overrides):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=["hardware.device=cpu", f"store.url={db}", *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny checkpoint pretrained on the corpus, then each method fine-tuned on it
    (rslora also merges its adapter); records by method."""
    tmp = tmp_path_factory.mktemp("finetune")
    db = f"sqlite:///{tmp}/s.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EFFBENCH_ARTIFACTS", str(tmp / "artifacts"))
        mp.setenv("EFFBENCH_TASK_DIR", str(tmp / "tasks"))  # the offline lm-eval suite, built on first use
        base = execute(compose_cfg(db, *PRETRAIN))
        assert base.status is Status.OK, base.error
        runs = {}
        for method in METHODS:
            runs[method] = execute(compose_cfg(db, *FINETUNE, f"model.run_id={base.id}", f"technique={method}",
                                               *EXTRA[method]))
            assert runs[method].status is Status.OK, runs[method].error
        yield {"db": db, "base": base, "runs": runs}


def technique_cfg(name, *overrides):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=[f"technique={name}", *overrides])).technique


def apply(model, name, *overrides):
    cfg = technique_cfg(name, *overrides)
    return get_technique(cfg.method).apply(model, cfg, torch.device("cpu"))


def n_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------
# Trainable parameters: the analytic count per method


@pytest.mark.parametrize("method", ["lora", "rslora", "pissa-niter4", "loraplus", "qlora", "dora", "freeze", "full"])
def test_trainable_parameters_match_the_analytic_count(tiny_cfg, method):
    model = load_model(tiny_cfg).model
    total = sum(p.numel() for p in model.parameters())
    d, inter, layers, vocab = tiny_cfg.hidden_size, tiny_cfg.intermediate_size, tiny_cfg.num_layers, 384
    kv = d  # MHA: k/v project to num_heads × head_dim = d
    # Llama default targets, (d_in, d_out) each: q, k, v, o, gate, up, down
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, inter), (d, inter), (inter, d)]
    r = 8
    lora = layers * sum(r * (i + o) for i, o in shapes)
    expected = {
        "lora": lora, "rslora": lora, "pissa-niter4": lora, "loraplus": lora, "qlora": lora,
        "dora": lora + layers * sum(o for _, o in shapes),  # + the magnitude vector, d_out per matrix
        # top layer (attention 4·d², SwiGLU 3·d·I, two norms) + final norm + LM head
        "freeze": (4 * d * d + 3 * d * inter + 2 * d) + d + vocab * d,
        "full": total,
    }[method]
    adapted = apply(model, method, "technique.top_layers=1") if method == "freeze" else apply(model, method)
    assert n_trainable(adapted) == expected


def test_qlora_gradients_reach_the_lowest_adapter_after_an_eval_pass(tiny_cfg):
    """An eval-mode forward (the runner's step-0 evaluation) must not switch the
    4-bit layers to bitsandbytes' CPU kernel that has no backward."""
    model = apply(load_model(tiny_cfg).model, "qlora")
    x = torch.randint(3, 259, (2, 32), generator=torch.Generator().manual_seed(0))
    lowest = next(p for n, p in model.named_parameters() if "layers.0." in n and "lora_B" in n)

    def grad():
        model.train()
        model.zero_grad()
        model(input_ids=x, labels=x).loss.backward()
        return lowest.grad.clone()

    before = grad()
    model.eval()
    with torch.no_grad():
        model(input_ids=x)
    assert before.abs().sum() > 0
    torch.testing.assert_close(grad(), before)


def test_lora_on_moe_experts_uses_target_parameters_and_dora_is_refused():
    cfg = BuiltinModelConfig(name="moe", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                             arch="mixtral", arch_options={"num_experts": 4, "top_k": 2})
    model = load_model(cfg).model
    d, e, i = 64, 4, 64  # expert width = intermediate_size / top_k
    r = 8
    attention = 4 * r * (d + d)
    experts = r * e * (d + 2 * i) + r * e * (i + d)  # gate_up [E, 2I, d], down [E, d, I]: r·E·(d_in + d_out)
    assert n_trainable(apply(model, "lora")) == 2 * (attention + experts)
    with torch.device("meta"):
        from effbench.models.architectures import build_architecture

        meta = build_architecture(cfg, 384)
    with pytest.raises(ValueError, match="cannot adapt fused parameters.*target_parameters=\\[\\]"):
        get_technique("dora").check(meta, technique_cfg("dora"))


# ---------------------------------------------------------------------------
# Step 0


def test_lora_leaves_outputs_unchanged_and_pissa_changes_base_weights_not_outputs(tiny_cfg):
    x = torch.randint(3, 300, (2, 32))
    ref_model = load_model(tiny_cfg).model
    with torch.no_grad():
        ref = ref_model(input_ids=x).logits
    q_ref = ref_model.model.layers[0].self_attn.q_proj.weight.detach().clone()

    lora = apply(load_model(tiny_cfg).model, "lora").eval()
    with torch.no_grad():
        assert torch.equal(lora(input_ids=x).logits, ref)  # B = 0: exactly the base model

    for name in ("pissa", "pissa-niter4"):
        pissa = apply(load_model(tiny_cfg).model, name).eval()
        with torch.no_grad():
            out = pissa(input_ids=x).logits
        # Residual + principal part rebuild W up to fp32 rounding of the SVD.
        assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()
        residual = pissa.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
        assert (residual - q_ref).abs().max() > 1e-2  # the top-r part moved into A·B


# ---------------------------------------------------------------------------
# Runs on a trained checkpoint


def test_every_method_lowers_the_heldout_loss_and_reports_the_axis(trained):
    for method, r in trained["runs"].items():
        base, after = r.metric("quality.base_loss").value, r.metric("quality.loss").value
        print(f"{method}: held-out loss {base:.4f} → {after:.4f}")
        assert after < base, f"{method}: held-out loss {base:.4f} → {after:.4f}"
        assert r.axis == "finetuning" and r.scenario == "finetune"
        assert r.model == f"tiny+mha@{trained['base'].id[:8]}"
        # 8 steps: 2 warm-up + 2 segments of 3 measured
        assert len(r.metric("quality.train_loss").samples) == 8 and len(r.metric("latency.step_s").samples) == 6
        assert len(r.metric("quality.eval_loss").samples) == 2
        st = r.metric("throughput.samples_per_s")
        assert st.value == pytest.approx(4 * 6 / sum(r.metric("latency.step_s").samples), rel=0.05)
        assert r.metric("throughput.train_tokens_per_s").value == pytest.approx(st.value * SEQ)
        for name in ("throughput.samples_per_s_per_param", "memory.peak_bytes", "memory.amu", "compute.pcu",
                     "compute.mfu", "energy.avg_power_w", "quality.perplexity", "model.parameters"):
            r.metric(name)
    runs = trained["runs"]
    trainable = {m: runs[m].metric("model.trainable_parameters").value for m in runs}
    assert trainable["lora"] == trainable["rslora"] == trainable["pissa"] == trainable["loraplus"] == trainable["qlora"]
    # 4-bit weights count as the weights they stand for, not their packed bytes
    assert runs["qlora"].metric("model.parameters").value == runs["lora"].metric("model.parameters").value
    assert trainable["lora"] < trainable["dora"]
    assert trainable["dora"] < trainable["freeze"] < trainable["full"] == runs["full"].metric("model.parameters").value
    assert runs["rslora"].metric("latency.merge_s").value > 0  # merged; the others were not
    assert not any(m.name == "latency.merge_s" for m in runs["lora"].metrics)


def test_saved_artifacts_reload_with_the_same_outputs(trained):
    """Adapters (PiSSA's converted to plain LoRA of the original base), merged
    and full weights all load by run id and score the held-out set as the run did."""
    tok = load_model(ArtifactModelConfig(run_id=trained["base"].id, store_url=trained["db"])).tokenizer
    heldout, _ = encode(pydoc_sft().heldout, tok, SEQ)
    final = spread(heldout, FINAL)
    for method in ("lora", "pissa", "rslora", "freeze"):
        r = trained["runs"][method]
        files = os.listdir(r.artifact["path"])
        assert ("adapter_config.json" in files) == (method in ("lora", "pissa")), files  # rslora was merged
        loaded = load_model(ArtifactModelConfig(run_id=r.id, store_url=trained["db"]))
        loss, _, _ = response_loss(loaded.model.eval(), final, tok.pad_token_id, torch.device("cpu"))
        assert loss == pytest.approx(r.metric("quality.loss").value, rel=1e-5), method


def test_quality_tasks_score_the_trained_model(trained, monkeypatch):
    """The finetune scenario runs the quality group's lm-eval tasks on the model it trained:
    its stored scores equal those of the saved adapter reloaded and evaluated afresh."""
    from effbench.config.schema import QualityConfig
    from effbench.quality.lm_eval_runner import lm_eval_metrics

    r = trained["runs"]["lora"]
    stored = {m.name: m.value for m in r.metrics if m.name.startswith("quality.effbench_pydoc_ppl.")}
    assert set(stored) == {f"quality.effbench_pydoc_ppl.{k}" for k in ("word_perplexity", "byte_perplexity",
                                                                         "bits_per_byte")}
    reloaded = load_model(ArtifactModelConfig(run_id=r.id, store_url=trained["db"]))
    afresh = {m.name: m.value for m in lm_eval_metrics(reloaded.model.eval(), reloaded.tokenizer,
                                                       QualityConfig(tasks=["effbench_pydoc_ppl"], limit=2),
                                                       torch.device("cpu"))}
    assert stored == pytest.approx(afresh, rel=1e-4)
    base = load_model(ArtifactModelConfig(run_id=trained["base"].id, store_url=trained["db"]))
    before = {m.name: m.value for m in lm_eval_metrics(base.model.eval(), base.tokenizer,
                                                       QualityConfig(tasks=["effbench_pydoc_ppl"], limit=2),
                                                       torch.device("cpu"))}
    assert stored != pytest.approx(before, rel=1e-4)  # the trained model was scored, not the base
    assert not any(m.name.startswith("quality.effbench") for m in trained["runs"]["full"].metrics)  # tasks: none


def test_a_failing_quality_step_keeps_the_training_figures(trained, monkeypatch, tmp_path):
    import effbench.quality.lm_eval_runner as runner

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("simulated: not enough memory")

    monkeypatch.setenv("EFFBENCH_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setattr(runner, "_run", out_of_memory)
    r = execute(compose_cfg(trained["db"], *FINETUNE, f"model.run_id={trained['base'].id}", "technique=freeze",
                            "scenario.max_steps=3", "scenario.eval_every=1", *QUALITY))
    assert r.status is Status.OK, r.error
    assert r.metric("quality.loss").value > 0 and len(r.metric("latency.step_s").samples) == 1
    assert any(w.startswith("quality failed: quality.tasks=['effbench_pydoc_ppl']: RuntimeError: simulated")
               for w in r.warnings), r.warnings
    assert not any(m.name.startswith("quality.effbench") for m in r.metrics)


# ---------------------------------------------------------------------------
# Memory: LoRA vs full fine-tuning


def test_lora_peak_memory_is_below_full_finetuning(tmp_path):
    """Each run in a fresh process, so neither inherits the other's heap
    (a CPU peak is process RSS). The model has 12.6M parameters (48 MiB fp32),
    so full fine-tuning adds gradients (1×) and AdamW's two moments (2×) of
    all of them, ≈146 MiB, that LoRA (0.1M trainable) does not; activations
    are about the same. Measured here: ≈103 MiB (the moments, 97 MiB, are
    resident all through the window; gradients partly reuse memory freed by
    activations during backward). Asserted: more than half the 146 MiB, far
    above the few MiB of RSS noise between two such runs."""
    common = ["scenario=finetune", "model=tiny", "model.hidden_size=512", "model.num_layers=4",
              "model.intermediate_size=1376", "hardware.device=cpu", "scenario.seq_len=128",
              "scenario.micro_batch_size=2", "scenario.max_steps=2", "scenario.warmup_steps=1",
              "scenario.eval_every=1", "scenario.eval_samples=2", "scenario.final_eval_samples=2",
              "scenario.save_artifact=false"]
    env = {**os.environ, "EFFBENCH_DB_URL": f"sqlite:///{tmp_path}/s.db", "EFFBENCH_ARTIFACTS": str(tmp_path / "a")}
    for method in ("lora", "full"):
        out = subprocess.run([sys.executable, "-m", "effbench.cli", "run", *common, f"technique={method}",
                              f"tags=[{method}]"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    lora, full = store.runs(tag="lora")[0], store.runs(tag="full")[0]
    assert lora.status is Status.OK and full.status is Status.OK, (lora.error, full.error)
    n_full = full.metric("model.trainable_parameters").value
    n_lora = lora.metric("model.trainable_parameters").value
    expected_gap = 3 * 4 * (n_full - n_lora)  # grads + two AdamW moments, fp32
    gap = full.metric("memory.peak_bytes").value - lora.metric("memory.peak_bytes").value
    print(f"peak RSS: lora {lora.metric('memory.peak_bytes').value / 2**20:.0f} MiB, full "
          f"{full.metric('memory.peak_bytes').value / 2**20:.0f} MiB, gap {gap / 2**20:.0f} MiB "
          f"(expected ≈{expected_gap / 2**20:.0f} MiB)")
    assert gap > 0.5 * expected_gap


# ---------------------------------------------------------------------------
# Config time and data


def test_wrong_target_module_fails_at_config_time_listing_the_modules(tmp_path):
    db = f"sqlite:///{tmp_path}/s.db"
    cfg = compose_cfg(db, "scenario=finetune", "model=tiny", "technique=lora", "technique.target_modules=[q_proj,qkv]")
    listed = "down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"
    with pytest.raises(ConfigError, match=rf"'qkv' matches no module of LlamaForCausalLM.*{listed}"):
        execute(cfg)
    with pytest.raises(ConfigError, match="top_layers=9: the model has 4 layers"):
        execute(compose_cfg(db, "scenario=finetune", "model=tiny", "technique=freeze", "technique.top_layers=9"))
    assert not (tmp_path / "s.db").exists() or open_store(db).runs() == []


def test_sft_data_is_deterministic_real_and_split_by_topic(tmp_path):
    a, b = pydoc_sft(), pydoc_sft()
    assert a.fingerprint == b.fingerprint and len(a.train) > 500 and len(a.heldout) > 30
    assert not {e.source for e in a.train} & {e.source for e in a.heldout}  # held-out topics never trained on
    from pydoc_data.topics import topics

    for e in a.train[:50]:
        assert e.output in " ".join(topics[e.source].split())  # outputs are the docs' own text
    tok = load_model(BuiltinModelConfig(name="t", hidden_size=64, num_layers=1, num_heads=4,
                                        intermediate_size=128)).tokenizer
    (enc,), _ = encode(a.train[:1], tok, 512)
    prompt, response = format_example(a.train[0])
    n_prompt = len(tok(prompt, add_special_tokens=False).input_ids)
    assert enc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt  # loss on the response only
    assert enc.labels[n_prompt:] == enc.input_ids[n_prompt:] and enc.labels[-1] == tok.eos_token_id

    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(json.dumps({"q": f"Say {i}.", "a": f"{i}"}) for i in range(40)))
    local = load_sft("local", str(path), 0.2, instruction_field="q", output_field="a")
    assert len(local.train) + len(local.heldout) == 40 and local.heldout
    with pytest.raises(KeyError, match="no field 'instruction'"):
        load_sft("local", str(path))
